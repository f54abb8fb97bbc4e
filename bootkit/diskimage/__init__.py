"""Bootable GPT disk images holding a sysroot, made and changed without root or mounts.

`layout` says what goes where, `create` makes an image, `edit` changes or reads
one through a staged sysroot; `ext4fs` and `fatfs` write and read the two
filesystems with e2fsprogs and mtools (`debugfs` is the one door to debugfs,
`ext4tree` lists a root filesystem strictly before it is copied out, `ext4xattrs`
carries its extended attributes, `staged` changes the copy by directory
descriptors). Every image is read as hostile: what its guest wrote never leads a
read or a write outside bootkit's staging directory.
"""

from bootkit.diskimage.create import ImageSpec, create_image
from bootkit.diskimage.edit import change_image, deploy_to_image, edit_image, read_image
from bootkit.diskimage.layout import (
    BOOT_DIR,
    DEFAULT_ESP_SIZE,
    ESP_LABEL,
    MIB,
    ROOT_LABEL,
    DiskLayout,
    FilesystemIds,
    default_os_name,
    parse_size,
)
from bootkit.diskimage.reporting import ByteCounter, ImportProgress, Report

__all__ = [
    "BOOT_DIR",
    "DEFAULT_ESP_SIZE",
    "ESP_LABEL",
    "MIB",
    "ROOT_LABEL",
    "ByteCounter",
    "DiskLayout",
    "FilesystemIds",
    "ImageSpec",
    "ImportProgress",
    "Report",
    "change_image",
    "create_image",
    "default_os_name",
    "deploy_to_image",
    "edit_image",
    "parse_size",
    "read_image",
]
