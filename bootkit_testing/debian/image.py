"""The Debian test tree as a bootable OCI image, in two versions one package apart.

An image is cut into layers as a distribution's build would: by dpkg package
ownership (var/lib/dpkg/info/*.list). Packages, and the groups of files under usr/
no package owns (the kernel, bootkit, python's byte code, udev's database), are
packed into PACKAGE_LAYERS layers of similar size; one last layer holds the rest:
/etc, /var, every directory, and the files that say which version this is (dpkg's
status, os-release). So the two versions share every layer but two: the one holding
the changed package, and the last.

Version 1 is the tree as it was made (IMAGE_V1's os-release); version 2 is version
1 with IMAGE_V2's os-release and the files of CHANGED_PACKAGE changed (IMAGE_MARKER
and the version appended), its version in dpkg's status bumped. The split of version 1
is reused for version 2, so a layer's contents follow its packages, not its size.

Layers are written reproducibly (sorted, directory times fixed, gzip without a time
stamp), so equal contents give equal digests in both versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootkit.base.xattrs import read_xattrs

from ..oci import REF_NAME, Member, write_image
from .base import run_command
from .guest_report import IMAGE_MARKER
from .layer import OsRelease, Variant, derive_tree

IMAGE_V1 = Variant(
    "image-1", OsRelease("12.5", "12.5 (bookworm)", "Debian GNU/Linux 12.5 (bootkit image 1)"),
    "tuning=image-1\n",
)
IMAGE_V2 = Variant(
    "image-2", OsRelease("12.6", "12.6 (bookworm)", "Debian GNU/Linux 12.6 (bootkit image 2)"),
    "tuning=image-2\n",
)
# Small, and nothing in the boot runs it; the guest reads CHANGED_FILE's last line.
CHANGED_PACKAGE = "hostname"
PACKAGE_LAYERS = 9
LABEL_BOOTABLE = "containers.bootc"
LABEL_VERSION = "org.opencontainers.image.version"
# Files that differ in every version, whoever owns them: kept in the last layer.
VERSION_FILES = frozenset({"var/lib/dpkg/status", "usr/lib/os-release"})
# Unowned files under usr/ are grouped by this many leading path components.
GROUP_DEPTH = 3
# Directories' times change with every file added or replaced in them; one fixed
# time keeps a layer that shares a directory with a changed one unchanged.
DIRECTORY_MTIME = 1_700_000_000
DPKG_INFO = "var/lib/dpkg/info"


# --- which files go together -----------------------------------------------------------


def _inside(tree: Path, rel: str, parents: dict[str, str | None]) -> str | None:
    """Where a path dpkg lists is in `tree` (its directories resolved, /bin -> usr/bin)."""
    parent, _, name = rel.rpartition("/")
    if parent not in parents:
        real_tree = os.path.realpath(tree)
        real = os.path.realpath(os.path.join(tree, parent))
        inside = real == real_tree or real.startswith(real_tree + os.sep)
        parents[parent] = os.path.relpath(real, real_tree) if inside else None
    resolved = parents[parent]
    if resolved is None:
        return None
    return name if resolved == "." else f"{resolved}/{name}"


def package_owners(tree: Path) -> dict[str, str]:
    """Each file or symlink of `tree` a package lists, and that package (the first, sorted)."""
    owners: dict[str, str] = {}
    parents: dict[str, str | None] = {}
    for listing in sorted((tree / DPKG_INFO).glob("*.list")):
        package = listing.name.removesuffix(".list").partition(":")[0]
        for line in listing.read_text(errors="replace").splitlines():
            rel = line.strip().strip("/")
            if not rel:
                continue
            path = _inside(tree, rel, parents)
            if path is None or path in owners:
                continue
            try:
                mode = os.lstat(tree / path).st_mode
            except OSError:
                continue
            if not stat.S_ISDIR(mode):
                owners[path] = package
    return owners


def _walk(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path under `tree` (relative), parents before children, in a stable order."""
    stack = [""]
    while stack:
        directory = stack.pop()
        names = sorted(os.listdir(tree / directory) if directory else os.listdir(tree))
        subdirs = []
        for name in names:
            rel = f"{directory}/{name}" if directory else name
            st = os.lstat(tree / rel)
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def _unit_of(path: str, owners: Mapping[str, str]) -> str | None:
    """What `path` is packed with: its package, an unowned group under usr/, or None (last layer)."""
    if path in VERSION_FILES:
        return None
    if path in owners:
        return owners[path]
    parent, _, name = path.rpartition("/")
    if parent.endswith("/__pycache__"):
        # Byte code dpkg's maintainer scripts compiled goes with its source.
        source = f"{parent.removesuffix('/__pycache__')}/{name.partition('.')[0]}.py"
        if source in owners:
            return owners[source]
    if path.startswith("usr/"):
        return "/".join(path.split("/")[:GROUP_DEPTH])
    return None


@dataclass(frozen=True)
class LayerPlan:
    """Which layer each file or symlink goes to; anything else goes to the last one."""

    layer_of: Mapping[str, int]
    count: int

    @classmethod
    def of_tree(cls, tree: Path, package_layers: int = PACKAGE_LAYERS) -> LayerPlan:
        owners = package_owners(tree)
        units: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for path, st in _walk(tree):
            if stat.S_ISDIR(st.st_mode):
                continue
            unit = _unit_of(path, owners)
            if unit is not None:
                units.setdefault(unit, []).append(path)
                sizes[unit] = sizes.get(unit, 0) + st.st_size
        # Largest first, each to the smallest layer so far: layers of similar size.
        loads = [0] * package_layers
        layer_of: dict[str, int] = {}
        for unit in sorted(units, key=lambda u: (-sizes[u], u)):
            index = loads.index(min(loads))
            loads[index] += sizes[unit]
            for path in units[unit]:
                layer_of[path] = index
        return cls(layer_of, package_layers + 1)

    def split(self, tree: Path) -> list[list[tuple[str, os.stat_result]]]:
        """The entries of each layer, each with the directories above its files."""
        last = self.count - 1
        layers: list[list[tuple[str, os.stat_result]]] = [[] for _ in range(self.count)]
        dirs: dict[str, os.stat_result] = {}
        added: list[set[str]] = [set() for _ in range(self.count)]
        for path, st in _walk(tree):
            if stat.S_ISDIR(st.st_mode):
                dirs[path] = st
                layers[last].append((path, st))
                continue
            index = self.layer_of.get(path, last)
            if index != last:
                parent = path.rpartition("/")[0]
                missing = []
                while parent and parent not in added[index]:
                    missing.append(parent)
                    added[index].add(parent)
                    parent = parent.rpartition("/")[0]
                layers[index].extend((d, dirs[d]) for d in reversed(missing))
            layers[index].append((path, st))
        return layers


# --- writing the layers --------------------------------------------------------------------


def layer_members(tree: Path, entries: Sequence[tuple[str, os.stat_result]]) -> list[Member]:
    """The members of a layer of `entries` of `tree`; a file's other names are files too,
    as they may be in other layers."""
    members = []
    for path, st in entries:
        member = Member(path, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                        xattrs=dict(read_xattrs(tree / path)), mtime=int(st.st_mtime))
        if stat.S_ISDIR(st.st_mode):
            member.kind, member.mtime = "d", DIRECTORY_MTIME
        elif stat.S_ISLNK(st.st_mode):
            member.kind, member.target = "l", os.readlink(tree / path)
        elif stat.S_ISREG(st.st_mode):
            member.data = (tree / path).read_bytes()
        else:
            raise ValueError(f"{tree / path}: not a file, directory or symlink")
        members.append(member)
    return members


# --- the two versions ------------------------------------------------------------------------


def _rewrite(path: Path, data: bytes) -> None:
    """Replace `path` by a new file with the same owner and mode: the tree's files are
    hardlinks into the cached base, which must not change."""
    st = os.lstat(path)
    path.unlink()
    path.write_bytes(data)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))


def _bump_status(status: str, package: str, suffix: str) -> str:
    stanzas = status.split("\n\n")
    for i, stanza in enumerate(stanzas):
        lines = stanza.split("\n")
        if f"Package: {package}" in lines:
            stanzas[i] = "\n".join(
                f"{line}{suffix}" if line.startswith("Version: ") else line for line in lines
            )
            return "\n\n".join(stanzas)
    raise ValueError(f"no package {package!r} in dpkg's status")


def _new_sums(tree: Path, text: str, sums: Mapping[str, str]) -> str:
    """dpkg's md5sums of a package (its own paths) with the sums of the files changed."""
    parents: dict[str, str | None] = {}
    lines = []
    for line in text.splitlines():
        old, _, listed = line.partition("  ")
        path = _inside(tree, listed.strip("/"), parents)
        lines.append(f"{sums.get(path or '', old)}  {listed}\n")
    return "".join(lines)


def change_package(tree: Path, package: str, version: str) -> list[str]:
    """Change every file of `package` in `tree` as its next version would, and say so in
    dpkg's records; the files changed, relative to `tree`."""
    owners = package_owners(tree)
    changed = sorted(p for p, owner in owners.items() if owner == package
                     and stat.S_ISREG(os.lstat(tree / p).st_mode))
    if not changed:
        raise ValueError(f"package {package!r} has no files in {tree}")
    sums = {}
    for path in changed:
        data = (tree / path).read_bytes() + f"\n{IMAGE_MARKER}{version}\n".encode()
        _rewrite(tree / path, data)
        sums[path] = hashlib.md5(data).hexdigest()
    md5sums = tree / DPKG_INFO / f"{package}.md5sums"
    if md5sums.exists():
        _rewrite(md5sums, _new_sums(tree, md5sums.read_text(), sums).encode())
    status = tree / "var/lib/dpkg/status"
    _rewrite(status, _bump_status(status.read_text(), package, f"+bootkit{version}").encode())
    return changed


# --- the oci-archive -------------------------------------------------------------------------


def write_archive(layout: Path, tag: str, dest: Path) -> None:
    """An oci-archive of the one image `tag` of `layout` (an OCI layout in a tar)."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    manifest = json.loads(_blob(layout, entry["digest"]))
    digests = [entry["digest"], manifest["config"]["digest"],
               *(layer["digest"] for layer in manifest["layers"])]
    members = {
        "oci-layout": (layout / "oci-layout").read_bytes(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode(),
    }
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for digest in dict.fromkeys(digests):
            tar.add(layout / "blobs/sha256" / digest.partition(":")[2],
                    f"blobs/sha256/{digest.partition(':')[2]}")
    tmp.rename(dest)


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes()


# --- both versions at once ----------------------------------------------------------------


@dataclass(frozen=True)
class DebianImages:
    """Both versions in one OCI layout (tags "1" and "2"), and each as an oci-archive."""

    layout: Path
    archives: Mapping[str, Path]  # tag -> oci-archive
    digests: Mapping[str, str]  # tag -> manifest digest
    versions: Mapping[str, Variant]  # tag -> what the image's os-release says
    changed: Sequence[str]  # the files version 2 changed (CHANGED_PACKAGE's)
    trees: Mapping[str, Path]


def image_of_tree(tree: Path, plan: LayerPlan, layout: Path, tag: str, variant: Variant) -> str:
    labels = {LABEL_BOOTABLE: "1", LABEL_VERSION: variant.os_release.version_id}
    layers = [layer_members(tree, entries) for entries in plan.split(tree)]
    return write_image(layout, tag, layers, labels=labels, architecture="amd64").manifest


def make_images(work: Path, tree: Path) -> DebianImages:
    """Both versions of the image, made from the test tree `tree` under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    trees = {"1": derive_tree(work / "image-1", tree, IMAGE_V1)}
    trees["2"] = derive_tree(work / "image-2", trees["1"], IMAGE_V2)
    changed = change_package(trees["2"], CHANGED_PACKAGE, "2")
    plan = LayerPlan.of_tree(trees["1"])
    layout = work / "layout"
    versions = {"1": IMAGE_V1, "2": IMAGE_V2}
    digests, archives = {}, {}
    for tag, variant in versions.items():
        digests[tag] = image_of_tree(trees[tag], plan, layout, tag, variant)
        archives[tag] = work / f"os-{tag}.tar"
        write_archive(layout, tag, archives[tag])
    return DebianImages(layout, archives, digests, versions, changed, trees)


def update_disk(dest: Path, archive: Path, name: str, label: str, work: Path) -> Path:
    """A raw ext4 disk image labelled `label` holding `archive` as `name`."""
    content = work / f"{dest.name}.content"
    content.mkdir()
    try:
        os.link(archive, content / name)
    except OSError:
        shutil.copyfile(archive, content / name)
    size = archive.stat().st_size + (64 << 20)
    run_command(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", content, dest,
                 f"{size // 1024}k"])
    shutil.rmtree(content)
    return dest
