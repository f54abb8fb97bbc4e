"""Deploying the Debian test image from a registry: bootkit against skopeo + umoci.

    .venv/bin/python benchmarks/oci.py [--repeat 3]

Needs root (the Debian tree is built as for the QEMU tests), skopeo, umoci and
docker-registry. Prints one table. What it measures, against a registry on 127.0.0.1
(bootkit_testing.registry, which counts the bytes it serves):

(a) first pull + deploy of the Debian test image (bootkit_testing.debian.image: about
    10 layers split by package) into a fresh sysroot by `bootkit deploy docker://...`,
    against `skopeo copy docker://... oci:DIR` + `umoci unpack` of the same image;
(b) the next version, one package changed: the bytes the registry served for it, and
    the disk it added under the sysroot (each inode counted once, as du does), against
    the size of the files that changed plus the directories of a tree and the copy of
    /etc every deployment has;
(c) `bootkit upgrade --check`: the bytes it fetched, with an update waiting and without.

(a) is also shown against the reference followed by `sync -f` of its bundle: bootkit
makes what it imported durable before it records it, which umoci does not do.

Targets: (a) no slower than skopeo + umoci; (b) served no more than the changed layers
plus 100 KB (manifest, configuration), disk no more than the changed files, directories
and /etc plus 1 MB (the records of the new layers); (c) < 100 KB.
(a) runs --repeat times, alternating which tool goes first; the best run of each is
reported. (b) and (c) are the same in every run: they are measured once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bootkit_testing import debian
from bootkit_testing.benchtable import Row, print_table
from bootkit_testing.debian.image import DebianImages, make_images
from bootkit_testing.kernel import KernelUnavailable, ensure_kernel
from bootkit_testing.registry import Registry

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
NAME = "bootkit/debian"
TAG = "latest"
# What lets an unsigned image in: bootkit is told so with --unverified as well.
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
CHECK_TARGET = 100_000


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    log(f"{name} ...")
    start = time.perf_counter()
    yield
    log(f"{name}: {time.perf_counter() - start:.1f} s")


def run(argv: Sequence[str | Path], env: dict[str, str] | None = None,
        ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode not in ok:
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                         f"{proc.stderr}{proc.stdout}")
    return proc


def timed(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    run(argv, env)
    return time.perf_counter() - start


def bootkit(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())",
            *args]


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path`, each inode counted once (as du does)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def tree_stats(tree: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return files, size


def update_floor(old: Path, new: Path) -> tuple[int, int, int]:
    """What a deployment of `new` must add next to one of `old`, in bytes allocated: the
    files that differ or are new, the directories of the tree, and the other files of
    /etc (each deployment has its own, writable copy)."""
    changed = dirs = etc = 0
    for root, subdirs, names in os.walk(new):
        for name in subdirs:
            dirs += os.lstat(os.path.join(root, name)).st_blocks * 512
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, new)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            before = os.path.join(old, rel)
            try:
                same = os.path.samefile(path, before) or _same_bytes(path, before)
            except OSError:
                same = False
            if not same:
                changed += st.st_blocks * 512
            elif rel.startswith("etc/"):
                etc += st.st_blocks * 512
    return changed, dirs, etc


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as f, open(b, "rb") as g:
        while True:
            x, y = f.read(1 << 20), g.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def layer_sizes(images: DebianImages, tag: str) -> dict[str, int]:
    blobs = images.layout / "blobs/sha256"
    manifest = json.loads((blobs / images.digests[tag].partition(":")[2]).read_bytes())
    return {layer["digest"]: int(layer["size"]) for layer in manifest["layers"]}


# --- the contenders ----------------------------------------------------------------------


@dataclass
class Results:
    bootkit: list[float]
    reference: list[float]
    skopeo_copy: list[float]
    # The reference with `sync -f` after it: what bootkit's deploy gives, a tree that a
    # power cut cannot take back (bootkit syncs before it records anything).
    reference_synced: list[float] = field(default_factory=list)
    bootkit_served: int = 0
    reference_served: int = 0
    update_served: int = 0
    update_reference_served: int = 0
    update_disk: int = 0
    update_reference_disk: int = 0
    check_waiting: int = 0
    check_none: int = 0


def bootkit_env(registry: Registry) -> dict[str, str]:
    return {**registry.env, "BOOTKIT_NO_PROGRESS": "1"}


def first_bootkit(registry: Registry, work: Path, policy: Path) -> tuple[Path, float, int]:
    sysroot = work / "bootkit"
    sysroot.mkdir()
    run(bootkit("init", "--sysroot", sysroot, "--os", "debian", "--bootloader", "systemd-boot"))
    run(["sync"])
    registry.reset_count()
    seconds = timed(bootkit("deploy", "--sysroot", sysroot, "--unverified", "--policy", policy,
                            registry.reference(NAME, TAG)), bootkit_env(registry))
    return sysroot, seconds, registry.served_bytes()


def publish(registry: Registry, images: DebianImages, tag: str) -> None:
    """Image `tag` of the layout becomes NAME:TAG in the registry, as a new release does."""
    run(["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{images.layout}:{tag}", registry.reference(NAME, TAG)], registry.env)


def skopeo_copy(registry: Registry, layout: Path, tag: str) -> list[str | Path]:
    return ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
            registry.reference(NAME, TAG), f"oci:{layout}:{tag}"]


def first_reference(registry: Registry, work: Path) -> tuple[Path, float, float, float, int]:
    layout = work / "reference"
    run(["sync"])
    registry.reset_count()
    copy = timed(skopeo_copy(registry, layout, "1"), registry.env)
    served = registry.served_bytes()
    unpack = timed(["umoci", "unpack", "--image", f"{layout}:1", work / "bundle-1"])
    synced = timed(["sync", "-f", work / "bundle-1"])
    return layout, copy, unpack, synced, served


def measure(images: DebianImages, repeat: int, work: Path) -> Results:
    results = Results([], [], [])
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    for rep in range(repeat):
        with Registry(work / f"registry-{rep}") as registry:
            publish(registry, images, "1")
            run_dir = work / f"run-{rep}"
            run_dir.mkdir()
            order = ("bootkit", "reference") if rep % 2 == 0 else ("reference", "bootkit")
            sysroot = layout = None
            for who in order:
                with stage(f"{who}, run {rep + 1} of {repeat}"):
                    if who == "bootkit":
                        sysroot, seconds, served = first_bootkit(registry, run_dir, policy)
                        results.bootkit.append(seconds)
                        results.bootkit_served = served
                    else:
                        layout, copy, unpack, synced, served = first_reference(registry, run_dir)
                        results.reference.append(copy + unpack)
                        results.reference_synced.append(copy + unpack + synced)
                        results.skopeo_copy.append(copy)
                        results.reference_served = served
            assert sysroot is not None and layout is not None
            if rep == 0:
                with stage("the update"):
                    measure_update(registry, images, sysroot, layout, run_dir, results)
        shutil.rmtree(work / f"run-{rep}")
    return results


def measure_update(registry: Registry, images: DebianImages, sysroot: Path, layout: Path,
                   work: Path, results: Results) -> None:
    env = bootkit_env(registry)
    publish(registry, images, "2")
    registry.reset_count()
    run(bootkit("upgrade", "--sysroot", sysroot, "--check"), env, ok=(0,))
    results.check_waiting = registry.served_bytes()
    before = disk_usage(sysroot)
    registry.reset_count()
    run(bootkit("upgrade", "--sysroot", sysroot), env)
    results.update_served = registry.served_bytes()
    results.update_disk = disk_usage(sysroot) - before
    registry.reset_count()
    run(bootkit("upgrade", "--sysroot", sysroot, "--check"), env, ok=(77,))
    results.check_none = registry.served_bytes()
    # The reference: the next version into the same layout (shared blobs are not fetched
    # again), then unpacked as a bundle of its own.
    before = disk_usage(layout)
    registry.reset_count()
    run(skopeo_copy(registry, layout, "2"), registry.env)
    results.update_reference_served = registry.served_bytes()
    run(["umoci", "unpack", "--image", f"{layout}:2", work / "bundle-2"])
    results.update_reference_disk = disk_usage(layout) - before + disk_usage(work / "bundle-2")


# --- the report ------------------------------------------------------------------------------


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def fmt_b(x: int) -> str:
    if x >= 10e6:
        return f"{x / 1e6:.1f} MB"
    if x >= 1e6:
        return f"{x / 1e6:.2f} MB"
    return f"{x / 1e3:.1f} KB"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"




def rows(images: DebianImages, r: Results) -> list[Row]:
    files, size = tree_stats(images.trees["1"])
    first, reference = min(r.bootkit), min(r.reference)
    sizes1, sizes2 = layer_sizes(images, "1"), layer_sizes(images, "2")
    new_layers = {d: s for d, s in sizes2.items() if d not in sizes1}
    changed, dirs, etc = update_floor(images.trees["1"], images.trees["2"])
    served_target = sum(new_layers.values()) + 100_000
    disk_target = changed + dirs + etc + 1_000_000
    return [
        (f"(a) pull + deploy, {len(sizes1)} layers, {files} files, {size / 1e6:.0f} MB",
         fmt_s(first), f"{fmt_s(reference)} (copy {fmt_s(min(r.skopeo_copy))} + unpack)",
         f"<= skopeo + umoci: {verdict(first <= reference)}"),
        ("(a) the same, the reference made durable (+ sync -f)", fmt_s(first),
         fmt_s(min(r.reference_synced)),
         f"<= skopeo + umoci + sync: {verdict(first <= min(r.reference_synced))}"),
        ("(a) bytes served", fmt_b(r.bootkit_served), fmt_b(r.reference_served),
         f"= compressed image {fmt_b(sum(sizes1.values()))}"),
        (f"(b) update, one package: bytes served ({len(new_layers)} layers changed, "
         f"{fmt_b(sum(new_layers.values()))})",
         fmt_b(r.update_served), fmt_b(r.update_reference_served),
         f"<= {fmt_b(served_target)}: {verdict(r.update_served <= served_target)}"),
        (f"(b) update: disk added (changed files {fmt_b(changed)} + directories {fmt_b(dirs)}"
         f" + /etc {fmt_b(etc)})",
         fmt_b(r.update_disk), f"{fmt_b(r.update_reference_disk)} (blobs + bundle)",
         f"<= {fmt_b(disk_target)}: {verdict(r.update_disk <= disk_target)}"),
        ("(c) upgrade --check, update waiting: bytes", fmt_b(r.check_waiting), "-",
         f"< {fmt_b(CHECK_TARGET)}: {verdict(r.check_waiting < CHECK_TARGET)}"),
        ("(c) upgrade --check, nothing new: bytes", fmt_b(r.check_none), "-",
         f"< {fmt_b(CHECK_TARGET)}: {verdict(r.check_none < CHECK_TARGET)}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="Runs of (a); the best is reported.")
    args = parser.parse_args()
    try:
        kernel = ensure_kernel()
        base = debian.ensure_base(kernel)
    except (KernelUnavailable, debian.DebianUnavailable) as err:
        raise SystemExit(f"bench: {err}") from None
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        with stage("the Debian test tree and its two images"):
            tree = debian.make_tree(work / "tree", base, debian.TREE_A)
            images = make_images(work / "images", tree)
        results = measure(images, args.repeat, work)
        print_table(rows(images, results), "skopeo + umoci", f"best of {args.repeat} runs for (a)")


if __name__ == "__main__":
    main()
