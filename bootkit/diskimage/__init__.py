"""Bootable GPT disk images holding a sysroot, made and changed without root or mounts."""
