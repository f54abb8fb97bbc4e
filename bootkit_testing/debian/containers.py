"""The Debian base with skopeo, which bootkit runs to fetch an OCI image inside the guest.

Cached beside the base it extends, as `.cache/debian/<base>-containers-<key>/`: a
full copy of the base (dpkg rewrites files the base shares by hardlinks with the
trees made from it, so the copy must own its inodes) with skopeo and the libraries
and configuration it needs installed by the tree's own dpkg. The key hashes the
package list and recipe; the .debs come from this machine's apt (`apt-get download`),
so the machine must run the base's Debian suite, as the test machines do.

gnupg, which libgpgme11 depends on, is left out on purpose: the scenario deploys
unverified images, and it would double what this adds to every boot's import.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from .base import CACHE, _cache_lock, download_debs, install_debs, run_command

PACKAGES = (
    "skopeo", "golang-github-containers-common", "golang-github-containers-image",
    "libgpgme11", "libassuan0",
)
# Bump when the recipe changes in a way the key does not see.
RECIPE = "1"
# Nothing reads them in the guest; they only cost import time.
EXCLUDED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*")


def _key(base: Path) -> str:
    text = json.dumps({"base": base.name, "packages": PACKAGES, "recipe": RECIPE,
                       "excluded": EXCLUDED})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_containers_base(base: Path) -> Path:
    """The cached copy of `base` with skopeo installed, made first when missing."""
    dest = CACHE / f"{base.name}-containers-{_key(base)}"
    with _cache_lock():
        if (dest / "usr/bin/skopeo").is_file():
            return dest
        log = CACHE / f"{dest.name}.log"
        log.unlink(missing_ok=True)
        debs = download_debs(CACHE / "debs-containers", PACKAGES, log)
        work = Path(tempfile.mkdtemp(prefix=f"build-{dest.name}-", dir=CACHE))
        try:
            root = work / "root"
            run_command(["cp", "-a", base, root], log)
            install_debs(root, debs, log, EXCLUDED)
            for stale in CACHE.glob(f"{base.name}-containers-*"):
                if stale.is_dir() and stale.name != dest.name:
                    shutil.rmtree(stale, ignore_errors=True)
            root.rename(dest)
        except RuntimeError as err:
            raise RuntimeError(f"adding skopeo to the Debian base failed (log: {log}):\n{err}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest
