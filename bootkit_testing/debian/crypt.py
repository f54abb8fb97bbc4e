"""The Debian base for a root filesystem in LUKS2, unlocked by a TPM2 in the initramfs.

Cached beside the base it extends, as `.cache/debian/<base>-crypt-<key>/`: a full
copy of the base (dpkg and depmod rewrite files the base shares by hardlinks) with
the TPM2 libraries systemd loads at run time (dlopen), the kernel modules of
dm-crypt with AES-XTS, and the initramfs built anew by the tree's dracut with its
`crypt` module (systemd-cryptsetup, which unlocks the volume the kernel command line
names with `rd.luks.uuid=`) and systemd-pcrphase, which measures "enter-initrd" into
PCR 11 before any volume is unlocked, as the signed PCR policy predicts.

dracut's own `systemd-pcrphase` module depends on its `tpm2-tss` module, which it
includes only when tpm2-tools is installed; that would bring libcurl and a dozen more
packages into every initramfs. The few files systemd-cryptsetup and systemd-pcrphase
need are named instead (INITRD_FILES): what those two modules install, but the tools.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from ..kernel import KernelTree
from .base import (
    CACHE,
    _cache_lock,
    build_initramfs,
    download_debs,
    dracut_args,
    install_debs,
    install_modules,
    run_command,
)

# systemd 252 loads libtss2-esys (which needs libtss2-sys), -rc and -mu, and the TCTI of
# the TPM it talks to (device: /dev/tpmrm0). tpm-udev, which they depend on, only adds
# a user and a udev rule for /dev/tpm*, which root does not need.
PACKAGES = (
    "libtss2-esys-3.0.2-0", "libtss2-sys1", "libtss2-mu0", "libtss2-rc0", "libtss2-tcti-device0",
)
# dm-crypt with the default LUKS2 cipher, aes-xts-plain64 (AES itself is built in), and
# the kernel crypto API for user space, which libcryptsetup decrypts key slots with.
# The TPM drivers (tpm_crb, tpm_tis) are built into Debian's kernel.
MODULES = ("dm_mod", "dm_crypt", "xts", "ecb", "algif_skcipher")
LIB = "/usr/lib/x86_64-linux-gnu"
INITRD_FILES = (
    "/usr/lib/systemd/systemd-pcrphase",
    "/usr/lib/systemd/system/systemd-pcrphase-initrd.service",
    "/usr/lib/systemd/system/initrd.target.wants/systemd-pcrphase-initrd.service",
    f"{LIB}/libtss2-esys.so.0", f"{LIB}/libtss2-sys.so.1", f"{LIB}/libtss2-mu.so.0",
    f"{LIB}/libtss2-rc.so.0", f"{LIB}/libtss2-tcti-device.so.0",
    # systemd-cryptsetup 252 opens a systemd-tpm2 token through this libcryptsetup plugin
    # when libcryptsetup supports plugins, as Debian's does (dracut's tpm2-tss adds it too).
    f"{LIB}/cryptsetup/libcryptsetup-token-systemd-tpm2.so",
)
DRACUT = dracut_args(add=("crypt",), keep=("crypt", "dm"), install=INITRD_FILES)
# Bump when the recipe changes in a way the key does not see.
RECIPE = "1"
EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*")


def _key(base: Path) -> str:
    text = json.dumps({"base": base.name, "packages": PACKAGES, "modules": MODULES,
                       "dracut": DRACUT, "recipe": RECIPE, "excluded": EXCLUDED})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_crypt_base(base: Path, kernel: KernelTree) -> Path:
    """The cached copy of `base` that unlocks a LUKS2 root with a TPM2, made first when missing."""
    dest = CACHE / f"{base.name}-crypt-{_key(base)}"
    initramfs = Path("usr/lib/modules") / kernel.version / "initramfs.img"
    with _cache_lock():
        if (dest / initramfs).is_file():
            return dest
        log = CACHE / f"{dest.name}.log"
        log.unlink(missing_ok=True)
        debs = download_debs(CACHE / "debs-crypt", PACKAGES, log)
        work = Path(tempfile.mkdtemp(prefix=f"build-{dest.name}-", dir=CACHE))
        try:
            root = work / "root"
            run_command(["cp", "-a", base, root], log)
            install_debs(root, debs, log, EXCLUDED)
            install_modules(root, kernel, MODULES, log)
            (root / initramfs).unlink()
            build_initramfs(root, kernel, log, DRACUT)
            for stale in CACHE.glob(f"{base.name}-crypt-*"):
                if stale.is_dir() and stale.name != dest.name:
                    shutil.rmtree(stale, ignore_errors=True)
            root.rename(dest)
        except RuntimeError as err:
            raise RuntimeError(f"adding disk encryption to the Debian base failed "
                               f"(log: {log}):\n{err}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


# Where systemd-stub 252 puts a UKI's .pcrsig for the initramfs. systemd-cryptsetup 252
# looks for the signature only in /etc/systemd, /run/systemd and /usr/lib/systemd, and
# systemd-tmpfiles copies it from here to /run/systemd in no set order with the
# unlocking: so the path is given.
PCR_SIGNATURE = "/.extra/tpm2-pcr-signature.json"


def luks_kargs(uuid: str) -> tuple[str, ...]:
    """The kernel arguments that have the initramfs unlock the LUKS2 volume `uuid` with the
    TPM2, checking the signed PCR policy (the passphrase is asked for when that fails)."""
    return (f"rd.luks.uuid={uuid}",
            f"rd.luks.options=tpm2-device=auto,tpm2-signature={PCR_SIGNATURE}")
