"""A real distribution to deploy and boot: Debian 12 with systemd, and dracut with bootkit's module.

The tree is made in two layers: `base` (debootstrap, the kernel and a dracut
initramfs; slow, cached) and `layer` (bootkit from this checkout and the guest's
report; fast, per test session). What the guest reports and does is described in
`guest_report`: one line `BOOTKIT-TEST <key>=<value>` per finding, the format of
bootkit_testing.harness's BootReport, then this boot's step of the scenario
(`stage`, `crash`, `fail`, `update`, `rollback`, the OCI scenario's `oci-switch`,
`oci-upgrade`, `oci-rollback`, benchmarks/guest.py's `bench-deploy` and
`bench-profile`, or only the report), passed in by QEMU's fw_cfg.
For the OCI scenario, `containers` adds skopeo to the base and `image` makes the
test tree into an OCI image of layers split by package, in two versions. For
measured boot, `crypt` makes a base whose initramfs unlocks a LUKS2 root with the
TPM through systemd's signed PCR 11 policy.
"""

from .base import DebianUnavailable, ensure_base, missing_prerequisites
from .guest_report import STEP_FW_CFG, UPDATE_LABEL, UPDATE_TAR
from .layer import (
    SITE_CONF,
    SITE_CONF_EDITED,
    TREE_A,
    TREE_B,
    OsRelease,
    Variant,
    derive_tree,
    make_tree,
    make_update_disk,
)

__all__ = [
    "SITE_CONF",
    "SITE_CONF_EDITED",
    "STEP_FW_CFG",
    "TREE_A",
    "TREE_B",
    "UPDATE_LABEL",
    "UPDATE_TAR",
    "DebianUnavailable",
    "OsRelease",
    "Variant",
    "derive_tree",
    "ensure_base",
    "make_tree",
    "make_update_disk",
    "missing_prerequisites",
]
