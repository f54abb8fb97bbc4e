"""Debian's snakeoil Secure Boot setup: a known key and firmware that trusts it.

Debian's ovmf package ships a vars template with its snakeoil certificate
already enrolled as PK, KEK and db, the code image that enforces Secure Boot
with it, and the (encrypted) key. Images signed with SNAKEOIL_KEY boot under
SNAKEOIL_CODE and nothing else does: what the Secure Boot tests need.
"""

from __future__ import annotations

from pathlib import Path

from bootkit.base.files import atomic_copy
from bootkit.errors import BootkitError

SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
SNAKEOIL_PASSPHRASE = b"snakeoil"
SNAKEOIL_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
SNAKEOIL_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")


def make_secure_boot_vars(output: Path, template: Path = SNAKEOIL_VARS) -> Path:
    """A private, writable OVMF vars file with Secure Boot keys enrolled.

    The default template has the snakeoil certificate as PK, KEK and db. Each
    VM needs its own copy: the firmware writes to it.
    """
    if not template.is_file():
        raise BootkitError(f"OVMF vars template {template} not found",
                           hint="install Debian's ovmf package")
    atomic_copy(template, output)
    return output
