"""The base of the Debian test tree: Debian 12 with systemd, and dracut with bootkit's module.

Slow, so cached in `.cache/debian/base-<key>/`: `debootstrap --variant=minbase` of
bookworm with systemd, python3 and bootkit's libraries, trimmed of docs, locales and
apt caches; the test kernel at usr/lib/modules/<kver>/vmlinuz with the few modules a
QEMU guest needs; and usr/lib/modules/<kver>/initramfs.img, built by the tree's own
dracut (in a chroot) with bootkit's dracut module. The key hashes every input
(package list, mirror, kernel, module list, dracut options and module files), so a
change to any of them builds a new base; the .debs are kept in `.cache/debian/debs`
for the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bootkit.initramfs import kmod

from ..harness import bootkit_command
from ..kernel import KernelTree

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "debian"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the base recipe changes in a way the key does not see.
RECIPE = "1"

PACKAGES = (
    "systemd-sysv", "udev", "kmod",
    # bootkit itself; debootstrap does not resolve the virtual package
    # python3-cffi-backend-api-* that python3-cryptography depends on.
    "python3", "python3-click", "python3-construct", "python3-pyelftools",
    "python3-pefile", "python3-cryptography", "python3-cffi-backend",
    # The initramfs is built by the tree's own dracut, so its systemd matches the tree's.
    "dracut-core",
    # systemd-bless-boot, which marks a counted systemd-boot entry good, alongside
    # bootkit's own unit.
    "systemd-boot",
)

# What the guest loads: the root disk and ext4 (also in the initramfs), the ESP
# (vfat with its code pages), fw_cfg for the scenario step, and what systemd mounts early.
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_console", "virtio_rng",
    "ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_ascii", "nls_utf8",
    "efivarfs", "autofs4", "configfs", "fuse", "loop", "binfmt_misc", "qemu_fw_cfg",
)

# dracut modules nothing here needs: no encrypted, LVM, RAID, NVDIMM or network
# storage, no resume, no separate /usr, no return to the initramfs at shutdown.
DRACUT_OMIT = (
    "crypt", "dm", "kernel-modules-extra", "nvdimm", "lunmask", "resume",
    "terminfo", "virtiofs", "usrmount", "shutdown",
)


def dracut_args(
    add: Sequence[str] = (), keep: Sequence[str] = (), install: Sequence[str] = ()
) -> tuple[str, ...]:
    """dracut's options for a base: bootkit's module and `add`, DRACUT_OMIT but `keep`, and
    the files `install` names (with the libraries they need)."""
    omit = [m for m in DRACUT_OMIT if m not in keep]
    return (
        "--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode",
        "--add", " ".join(("bootkit", *add)), "--omit", " ".join(omit),
        *(("--install", " ".join(install)) if install else ()),
    )


DRACUT_ARGS = dracut_args()
DRACUT_MODULE = REPO / "bootkit" / "data" / "dracut" / "90bootkit"

# Trimmed from the base: nothing in this test system reads them at run time, and each
# file costs time in every import of the tree under TCG. (directory, names kept in it)
TRIM = (
    ("usr/share/doc", ()), ("usr/share/man", ()), ("usr/share/info", ()),
    ("usr/share/locale", ()), ("usr/share/bash-completion", ()), ("usr/share/zsh", ()),
    ("usr/share/lintian", ()),
    ("usr/share/zoneinfo", ("Etc",)),  # /etc/localtime points to Etc/UTC
    ("usr/lib/python3.11/lib2to3", ()), ("usr/lib/python3.11/test", ()),
    ("usr/lib/x86_64-linux-gnu/gconv", ("gconv-modules", "gconv-modules.d")),
    ("var/cache/apt", ()), ("var/lib/apt/lists", ()), ("var/log", ()),
)
# python3-pefile depends on python3-future but never imports it.
PURGE = ("python3-future",)

CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class DebianUnavailable(Exception):
    """The Debian tree cannot be built on this machine; the message says why."""


# --- running things --------------------------------------------------------------------


def run_command(
    argv: Sequence[str | Path], log: Path | None = None, env: dict[str, str] | None = None
) -> str:
    started = time.monotonic()
    # The cached trees must not depend on the umask of whoever runs this (a test may
    # narrow it for a moment while a base is built in another thread).
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, env=env,
        umask=0o022,
    )
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, argv))}\n{proc.stdout}{proc.stderr}"
                    f"({time.monotonic() - started:.1f} s, exit status {proc.returncode})\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{tail}")
    return str(proc.stdout)


# Mounts what chroot'ed tools expect, in a mount namespace of its own, so the mounts
# end with the command whatever happens.
_IN_TREE = (
    'root=$1; shift; '
    'mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" && '
    'mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"'
)


def run_in_tree(tree: Path, argv: Sequence[str], log: Path | None = None) -> str:
    env = {"PATH": CHROOT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    return run_command(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_TREE, "sh",
         tree, *argv],
        log, env=env,
    )


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap and chroot)")
    for tool in ("debootstrap", "unshare", "chroot", "depmod", "tar", "mke2fs"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def download_debs(dest: Path, packages: Sequence[str], log: Path) -> list[Path]:
    """The .deb of each of `packages` in `dest`, from this machine's apt (`apt-get download`)
    when one is missing: the machine must run the base's Debian suite, as test machines do."""
    dest.mkdir(parents=True, exist_ok=True)

    def found() -> list[Path | None]:
        return [next(iter(sorted(dest.glob(f"{name}_*.deb"))), None) for name in packages]

    debs = found()
    if any(deb is None for deb in debs):
        run_command(["sh", "-c", 'cd "$1" && shift && exec apt-get download "$@"', "sh",
                     dest, *packages], log)
        debs = found()
    have = [deb for deb in debs if deb is not None]
    if len(have) != len(packages):
        raise RuntimeError(f"apt-get download left no .deb of some of {packages} in {dest}")
    return have


def install_debs(root: Path, debs: Sequence[Path], log: Path, excluded: Sequence[str] = ()) -> None:
    """Install `debs` into the tree at `root` with its own dpkg, their dependencies unchecked
    (what they need from the base is there); `excluded`: path patterns left out."""
    inside = root / "tmp/bootkit-debs"
    inside.mkdir()
    for deb in debs:
        shutil.copy2(deb, inside)
    run_in_tree(root, [
        "dpkg", "--force-depends", *(f"--path-exclude={p}" for p in excluded),
        "--install", *(f"/tmp/bootkit-debs/{deb.name}" for deb in debs),
    ], log)
    shutil.rmtree(inside)


# --- the mirror ------------------------------------------------------------------------


def _sources_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(URIs, suites) of each entry of a deb822 .sources file."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split():
            yield fields.get("uris", "").split(), fields.get("suites", "").split()


def _list_entries(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(URIs, suites) of each `deb` line of a one-line-style sources.list."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3 and words[0] == "deb":
            if words[1].startswith("["):
                words = [words[0], *words[next(i for i, w in enumerate(words) if w.endswith("]")) + 1:]]
            if len(words) >= 3:
                yield [words[1]], [words[2]]


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for the suite (BOOTKIT_DEBIAN_MIRROR wins)."""
    if env := os.environ.get("BOOTKIT_DEBIAN_MIRROR"):
        return env
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = _sources_entries(text) if path.suffix == ".sources" else _list_entries(text)
        for uris, suites in entries:
            if SUITE in suites:
                for uri in uris:
                    if not uri.rstrip("/").endswith("-security"):
                        return uri.rstrip("/")
    return DEFAULT_MIRROR


# --- the base layer ----------------------------------------------------------------------


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def base_key(kernel: KernelTree, mirror: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({
        "recipe": RECIPE, "suite": SUITE, "mirror": mirror, "packages": PACKAGES,
        "modules": MODULES, "dracut": DRACUT_ARGS, "trim": TRIM, "purge": PURGE,
        "kernel": kernel.version,
    }, sort_keys=True).encode())
    _hash_file(h, kernel.vmlinuz)
    for path in sorted(DRACUT_MODULE.iterdir()):
        h.update(path.name.encode())
        _hash_file(h, path)
    return h.hexdigest()[:16]


def _debootstrap(root: Path, mirror: str, log: Path) -> None:
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run_command(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          f"--cache-dir={debs}", SUITE, root, mirror], log)


def _empty(directory: Path, keep: Sequence[str] = ()) -> None:
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _trim(root: Path, log: Path) -> None:
    run_in_tree(root, ["dpkg", "--purge", "--force-depends", *PURGE], log)
    for rel, keep in TRIM:
        _empty(root / rel, keep)
    # devtmpfs is mounted over /dev at boot; nodes here would only be skipped on import.
    _empty(root / "dev")


def _install_kernel(root: Path, kernel: KernelTree, log: Path) -> Path:
    """vmlinuz and the modules in MODULES (with what they need) under usr/lib/modules/<kver>."""
    dest = root / "usr/lib/modules" / kernel.version
    dest.mkdir(parents=True)
    shutil.copy2(kernel.vmlinuz, dest / "vmlinuz")
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kernel.modules_dir / name).is_file():
            shutil.copy2(kernel.modules_dir / name, dest / name)
    install_modules(root, kernel, MODULES, log)
    return dest


def install_modules(root: Path, kernel: KernelTree, modules: Sequence[str], log: Path) -> None:
    """The `modules` (with what they need) under usr/lib/modules/<kver>, and depmod's index.

    A module the tree has already is left as it is: the tree may share it by a hardlink."""
    dest = root / "usr/lib/modules" / kernel.version
    order = kmod.load_order(kmod.ModuleTree(kernel.modules_dir), modules)
    for module in order.modules:
        target = dest / module.relpath
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module.path, target)
    run_command(["depmod", "-b", root, kernel.version], log)


def build_initramfs(
    root: Path, kernel: KernelTree, log: Path, dracut: Sequence[str] = DRACUT_ARGS
) -> None:
    """usr/lib/modules/<kver>/initramfs.img, by the tree's own dracut with options `dracut`."""
    module_dir = root / "usr/lib/dracut/modules.d/90bootkit"
    run_command([*bootkit_command(), "dracut", "install", "--dest", module_dir], log)
    image = f"/usr/lib/modules/{kernel.version}/initramfs.img"
    run_in_tree(root, ["dracut", *dracut, "--kver", kernel.version, "--force", image], log)


def build_base(dest: Path, kernel: KernelTree, mirror: str, log: Path) -> None:
    """debootstrap + kernel + initramfs into `dest` (which must not exist)."""
    _debootstrap(dest, mirror, log)
    _trim(dest, log)
    _install_kernel(dest, kernel, log)
    build_initramfs(dest, kernel, log)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_stale(keep: Path) -> None:
    """Bases built from other inputs: each is a few hundred MB, and rebuilt when needed."""
    for path in CACHE.glob("base-*"):
        if path.name.startswith(keep.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def ensure_base(kernel: KernelTree) -> Path:
    """The cached base tree for `kernel`, built first when there is none for these inputs."""
    missing = missing_prerequisites()
    if missing:
        raise DebianUnavailable(f"cannot build the Debian tree here, missing: {', '.join(missing)}")
    mirror = find_mirror()
    key = base_key(kernel, mirror)
    base = CACHE / f"base-{key}"
    with _cache_lock():
        if (base / "usr/lib/modules" / kernel.version / "initramfs.img").is_file():
            return base
        work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=CACHE))
        log = CACHE / f"base-{key}.log"
        log.unlink(missing_ok=True)
        try:
            build_base(work / "root", kernel, mirror, log)
            if base.exists():
                shutil.rmtree(base)
            os.rename(work / "root", base)
            _remove_stale(keep=base)
        except RuntimeError as err:
            raise RuntimeError(f"building the Debian base tree failed (log: {log}):\n{err}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return base


