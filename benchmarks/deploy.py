"""Deploy speed and disk cost, bootkit against ostree, plus boot-entry regeneration at scale.

    .venv/bin/python benchmarks/deploy.py [--skip-ostree] [--counts 1,10,100,1000]

Prints one table. What it measures:

(a) first import + deploy of a ~700 MB Debian tree (debootstrap minbase with systemd,
    udev and kmod, plus a Debian kernel and its modules) by `bootkit deploy`, against
    `ostree commit` + `ostree admin deploy` of the same tree, and against a plain
    `cp -a` of it into the same filesystem (shown with and without a `sync` after it:
    bootkit's deploy includes making the tree durable, cp does not);
(b) a second deploy of that tree with one file changed: time, and the disk it adds
    (counted per inode, like du, over the whole sysroot), beside `cp -al` of the tree
    (every directory and symlink made anew, every file a hardlink: a new deployment's
    floor);
(c) `bootkit bootloader update` with 1, 10, 100 and 1000 deployments, made directly
    through the core API with empty trees; only the update is timed, three ways:
    nothing changed; one deployment added as the new default, which is a deploy's
    switch; every entry replaced, as the first switch from old-format entry names.

Targets: (a) within 1.5x of `cp -a` (without its sync), so at least twice as fast
as ostree's commit + deploy; (b) < 0.6 s through the CLI, interpreter start-up
included (< 1 s in-process), and < 1 MB; (c) nothing changed and one deployment
added: 100 entries in < 50 ms, 1000 in < 300 ms, and a cost per entry that does not
grow with their number (each row shows it). The Debian tree is cached under
.cache/bench/; `--only-entries`
measures (c) alone, without it.

The CLI runs from bytecode compiled beforehand, as an installed bootkit does: with
PYTHONDONTWRITEBYTECODE set, each run would otherwise compile every module again.

The kernel is the test suite's (bootkit_testing.kernel).

(a) and (b) run --repeat times, alternating which tool goes first, and the best run
of each is reported: on a shared machine the worst runs measure the neighbours.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bootkit.boot import payloads
from bootkit.boot.payloads import Payload
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.records.state import State
from bootkit.sysroot import operations
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.layout import Sysroot

from bootkit_testing.benchtable import Row, print_table
from bootkit_testing.kernel import KernelUnavailable, ensure_kernel

REPO = Path(__file__).resolve().parents[1]

CACHE = REPO / ".cache" / "bench"
ROOTFS = CACHE / "rootfs"
TREE = CACHE / "tree"
RUN = CACHE / "run"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INITRAMFS_SIZE = 32 << 20  # about what dracut makes for this kernel
CHANGED = "usr/share/bootkit-bench/changed"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(argv: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed:\n{proc.stderr}{proc.stdout}")
    return proc


def timed(argv: list[str | Path], **kw: object) -> float:
    start = time.perf_counter()
    run(argv, **kw)
    return time.perf_counter() - start


# --- inputs -----------------------------------------------------------------------------


def ensure_rootfs() -> Path:
    if ROOTFS.is_dir():
        return ROOTFS
    tmp = ROOTFS.with_name("rootfs.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {SUITE} into {tmp} (about a minute)")
    run(["debootstrap", "--variant=minbase", "--include=systemd-sysv,udev,kmod", SUITE, tmp,
         MIRROR])
    tmp.rename(ROOTFS)
    return ROOTFS


def ensure_tree() -> Path:
    """The Debian tree as both tools want it: /etc defaults in usr/etc, kernel in usr/lib/modules."""
    if TREE.is_dir():
        return TREE
    rootfs = ensure_rootfs()
    try:
        kernel = ensure_kernel()
    except KernelUnavailable as err:
        raise SystemExit(f"bench: {err}") from None
    tmp = TREE.with_name("tree.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"assembling {TREE}")
    run(["cp", "-a", rootfs, tmp])
    for child in (tmp / "dev").iterdir():  # device nodes: neither tool keeps them
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (tmp / "etc").rename(tmp / "usr/etc")
    dest = tmp / "usr/lib/modules" / kernel.version
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", kernel.modules_dir, dest])
    shutil.copy2(kernel.vmlinuz, dest / "vmlinuz")
    (dest / "initramfs.img").write_bytes(random.Random(kernel.version).randbytes(INITRAMFS_SIZE))
    (tmp / CHANGED).parent.mkdir(parents=True)
    (tmp / CHANGED).write_text("first\n")
    tmp.rename(TREE)
    return TREE


def clear_run() -> None:
    if not RUN.exists():
        RUN.mkdir(parents=True)
        return
    # ostree marks its deployment roots immutable.
    for deployment in RUN.glob("ostree*/ostree/deploy/*/deploy/*"):
        subprocess.run(["chattr", "-i", str(deployment)], capture_output=True, check=False)
    shutil.rmtree(RUN)
    RUN.mkdir(parents=True)


def tree_stats(tree: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            size += st.st_size if not os.path.islink(os.path.join(root, name)) else 0
    return files, size


def warm(tree: Path) -> None:
    """Read the tree once, so neither tool is charged for the first cold read."""
    for root, _dirs, names in os.walk(tree):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path`, each inode counted once (as du does)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, names in os.walk(path):
        for name in dirs + names:
            st = os.lstat(os.path.join(root, name))
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total


def change_one_file(tree: Path) -> None:
    (tree / CHANGED).write_text(f"changed at {time.time()}\n")


# --- the contenders ----------------------------------------------------------------------


def compile_bytecode() -> None:
    """Compile bootkit's modules once, so that no CLI run is charged for compiling them."""
    if not compileall.compile_dir(REPO / "bootkit", quiet=1):
        raise SystemExit("bench: bootkit's modules do not compile")


def bootkit_env() -> dict[str, str]:
    return {**os.environ, "BOOTKIT_NO_PROGRESS": "1"}


def bootkit_cli(*args: str | Path) -> list[str | Path]:
    return [
        sys.executable,
        "-c",
        "import sys; from bootkit.cli import main; sys.exit(main())",
        *args,
    ]


Samples = dict[str, list[float]]


def bench_bootkit(tree: Path, rep: int, times: Samples, disk: dict[str, int]) -> None:
    sysroot = RUN / f"bootkit-{rep}"
    sysroot.mkdir(parents=True)
    env = bootkit_env()
    run(bootkit_cli("init", "--sysroot", sysroot, "--os", "debian", "--bootloader", "systemd-boot"))
    run(["sync"])
    times["bootkit first"].append(timed(bootkit_cli("deploy", "--sysroot", sysroot, tree), env=env))
    change_one_file(tree)
    disk["bootkit first"] = before = disk_usage(sysroot)
    run(["sync"])
    times["bootkit second"].append(
        timed(bootkit_cli("deploy", "--sysroot", sysroot, tree), env=env)
    )
    disk["bootkit second"] = disk_usage(sysroot) - before
    # The same once more inside this process: the deploy's own work, no interpreter start.
    change_one_file(tree)
    run(["sync"])
    start = time.perf_counter()
    deploy(Sysroot(sysroot), DeployRequest(tree))
    times["bootkit second in-process"].append(time.perf_counter() - start)


def bench_copy(tree: Path, rep: int, times: Samples, disk: dict[str, int]) -> None:
    """The floor for (a): a plain copy of the tree, then the sync that makes it durable."""
    dest = RUN / f"copy-{rep}"
    run(["sync"])
    times["cp -a"].append(timed(["cp", "-a", tree, dest]))
    times["cp sync"].append(timed(["sync"]))
    # The floor for (b): a new tree of hardlinks to unchanged files still makes every
    # directory and symlink anew, as `cp -al` does.
    run(["sync"])
    times["cp -al"].append(timed(["cp", "-al", tree, RUN / f"links-{rep}"]))


def bench_ostree(tree: Path, rep: int, times: Samples, disk: dict[str, int]) -> None:
    sysroot = RUN / f"ostree-{rep}"
    sysroot.mkdir(parents=True)
    repo = sysroot / "ostree/repo"
    run(["ostree", "admin", "init-fs", sysroot])
    run(["ostree", "admin", "os-init", "--sysroot", sysroot, "debian"])
    commit: list[str | Path] = ["ostree", f"--repo={repo}", "commit", "--branch=debian/bench", tree]
    deploy: list[str | Path] = ["ostree", "admin", "deploy", "--sysroot", sysroot, "--os", "debian",
                                "--karg-none"]
    run(["sync"])
    times["ostree commit"].append(timed(commit))
    times["ostree deploy"].append(timed([*deploy, "debian/bench"]))
    change_one_file(tree)
    disk["ostree first"] = before = disk_usage(sysroot)
    run(["sync"])
    times["ostree second commit"].append(timed(commit))
    times["ostree second deploy"].append(timed([*deploy, "debian/bench"]))
    disk["ostree second"] = disk_usage(sysroot) - before


# --- (c) regenerating many entries ---------------------------------------------------------


Update = dict[str, float]  # what was measured -> seconds (the CLI run included)

UPDATE_KINDS = (
    ("nothing changed", "unchanged"),
    ("one deployment added (new default, old one demoted)", "added"),
    ("every entry replaced (first switch from old-format names)", "rewritten"),
)


def bench_update(count: int, base: Path) -> Update:
    """Seconds for `bootloader update` with `count` deployments: in-process when nothing
    changed (best of 3), the same through the CLI; the switch of a deploy, which adds
    one deployment as the new default (best of 3); and in-process when every entry is
    replaced, as the first switch after old-format names were on $BOOT (best of 3)."""
    sysroot = base / f"update-{count}"
    sysroot.mkdir(parents=True)
    sr = operations.init(Sysroot(sysroot), SysrootConfig(os="bench", bootloader=Bootloader.SYSTEMD_BOOT))
    kernel = sysroot / "kernel"
    kernel.write_bytes(b"kernel\n")
    digest = payloads.file_digest(kernel)
    payload = Payload("bench", payloads.name_for("6.1.0-bench", [digest, digest]))
    payloads.install(sr.boot_path, payload, {"linux": kernel, "initrd": kernel},
                     {"linux": digest, "initrd": digest})

    def add(serial: int) -> str:
        dep = Deployment(
            os="bench", id=f"{serial}-bench", version=f"1.{serial}", source="bench",
            kernel_version="6.1.0-bench", payload=payload.name, title="Bench OS",
            created=time.time(), serial=serial,
        )
        sr.deployment_dir(dep.os, dep.id).mkdir()
        dep.save(sr.metadata_path(dep.os, dep.id))
        return dep.ref

    refs = [add(serial) for serial in range(1, count + 1)]
    State(generation=0, serial=count, default=refs[-1], deployments=tuple(refs)).save(sr.state_path)
    operations.bootloader_update(sr)  # the first generation
    out = {"unchanged": float("inf"), "added": float("inf"), "rewritten": float("inf")}
    for _ in range(3):
        start = time.perf_counter()
        operations.bootloader_update(Sysroot(sysroot))
        out["unchanged"] = min(out["unchanged"], time.perf_counter() - start)
    out["cli"] = timed(bootkit_cli("bootloader", "update", "--sysroot", sysroot), env=bootkit_env())
    serial = count
    for _ in range(3):
        # What a deploy's switch does, without the import: one more deployment, the
        # new default; the payload is shared, so only the menu changes.
        serial += 1
        ref = add(serial)
        state = Sysroot(sysroot).state()
        state.with_changes(serial=serial, default=ref,
                           deployments=(*state.deployments[1:], ref)).save(sr.state_path)
        start = time.perf_counter()
        operations.bootloader_update(Sysroot(sysroot))
        out["added"] = min(out["added"], time.perf_counter() - start)
    for _ in range(3):
        _to_old_names(sr.boot_path)
        start = time.perf_counter()
        operations.bootloader_update(Sysroot(sysroot))
        out["rewritten"] = min(out["rewritten"], time.perf_counter() - start)
    return out


def _to_old_names(boot: Path) -> None:
    """Name the entries as bootkit did before (generation, then menu rank), so that
    the next update replaces every one; with the code before, any change of the
    state's generation did that."""
    entries = boot / "loader/entries"
    names = sorted(os.listdir(entries), reverse=True)
    for rank, name in enumerate(names):
        old = f"bootkit-{1:08d}-{9999 - rank:04d}-{name.split('-', 3)[-1]}"
        os.rename(entries / name, entries / old)


# --- the report ------------------------------------------------------------------------------


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def fmt_mb(x: int) -> str:
    return f"{x / 1e6:.1f} MB"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


@contextmanager
def stage(name: str) -> Iterator[None]:
    log(f"{name} ...")
    start = time.perf_counter()
    yield
    log(f"{name}: {time.perf_counter() - start:.1f} s")


def measure_deploys(tree: Path, repeat: int, with_ostree: bool) -> tuple[Samples, dict[str, int]]:
    """(a) and (b): seconds per step and run, and the disk each deployment added."""
    times: Samples = collections.defaultdict(list)
    disk: dict[str, int] = {}
    contenders: list[Callable[[Path, int, Samples, dict[str, int]], None]] = [
        bench_bootkit, bench_copy]
    if with_ostree:
        contenders.append(bench_ostree)
    for rep in range(repeat):
        # Alternate who goes first, so that neither always meets the other's writeback.
        for fn in contenders if rep % 2 == 0 else contenders[::-1]:
            clear_run()
            with stage(f"{fn.__name__}, run {rep + 1} of {repeat}"):
                fn(tree, rep, times, disk)
    clear_run()
    return times, disk


def measure_updates(counts: Sequence[int]) -> dict[int, Update]:
    """(c): per deployment count, seconds as `bench_update` measures them."""
    updates: dict[int, Update] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for count in counts:
            with stage(f"bootloader update, {count} deployments"):
                updates[count] = bench_update(count, Path(tmp))
    return updates




def best(times: Samples, *names: str) -> float:
    """The best run of a sum of steps (steps of one run are added up)."""
    return min(map(sum, zip(*(times[n] for n in names), strict=True)))


def deploy_rows(times: Samples, disk: dict[str, int], files: int, size: int) -> list[Row]:
    first, second = best(times, "bootkit first"), best(times, "bootkit second")
    inproc = best(times, "bootkit second in-process")
    copy, synced = best(times, "cp -a"), best(times, "cp -a", "cp sync")
    has_ostree = "ostree commit" in times

    def ostree_cell(commit: str, deploy: str) -> str:
        if not has_ostree:
            return "-"
        total = best(times, commit, deploy)
        return (f"ostree {fmt_s(total)} (commit {fmt_s(best(times, commit))}"
                f" + deploy {fmt_s(best(times, deploy))})")

    o_first = best(times, "ostree commit", "ostree deploy") if has_ostree else None
    ostree_disk = {k: f"ostree {fmt_mb(disk[f'ostree {k}'])}" if has_ostree else "-"
                   for k in ("first", "second")}
    return [
        (f"(a) import+deploy, {files} files, {size / 1e6:.0f} MB", fmt_s(first),
         f"cp -a {fmt_s(copy)} ({fmt_s(synced)} with sync)",
         f"<= 1.5x cp -a: {verdict(first <= 1.5 * copy)} ({first / copy:.2f}x)"),
        ("(a) the same against ostree", fmt_s(first),
         ostree_cell("ostree commit", "ostree deploy"),
         f"<= ostree / 2: {verdict(first <= o_first / 2)}" if o_first else ""),
        ("(a) disk used by the first deployment", fmt_mb(disk["bootkit first"]),
         ostree_disk["first"], ""),
        ("(b) second deploy, one file changed: CLI, start-up included", fmt_s(second),
         ostree_cell("ostree second commit", "ostree second deploy"),
         f"< 0.6 s: {verdict(second < 0.6)}"),
        ("(b) the same, in-process (no interpreter start)", fmt_s(inproc),
         f"cp -al {fmt_s(best(times, 'cp -al'))}", f"< 1 s: {verdict(inproc < 1)}"),
        ("(b) second deploy: extra disk", fmt_mb(disk["bootkit second"]), ostree_disk["second"],
         f"< 1 MB: {verdict(disk['bootkit second'] < 1e6)}"),
    ]


# (c): seconds allowed for `bootloader update` with this many deployments.
UPDATE_TARGETS = {100: 0.05, 1000: 0.3}


def update_rows(updates: dict[int, Update]) -> list[Row]:
    rows: list[Row] = []
    for count, times in updates.items():
        limit = UPDATE_TARGETS.get(count)
        for what, key in UPDATE_KINDS:
            secs = times[key]
            extra = f"; CLI {fmt_s(times['cli'])}" if key == "unchanged" else ""
            # The targets are for the menus bootkit changes every day, not for the
            # one-time replacement of old-format names.
            target = (f"< {fmt_s(limit)}: {verdict(secs < limit)}"
                      if limit and key != "rewritten" else "")
            per_entry = f"{secs / count * 1e6:.0f} us/entry"
            rows.append((f"(c) bootloader update, {count} deployments, {what}",
                         f"{fmt_s(secs)} ({per_entry}{extra})", "-", target))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-ostree", action="store_true", help="Measure bootkit only.")
    parser.add_argument("--counts", default="1,10,100,1000", help="Deployment counts for (c).")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Runs of (a) and (b); the best one is reported."
    )
    parser.add_argument(
        "--only-entries", action="store_true", help="Measure (c) only: no Debian tree needed."
    )
    args = parser.parse_args()

    counts = [int(c) for c in args.counts.split(",")]
    if args.only_entries:
        CACHE.mkdir(parents=True, exist_ok=True)
        print_table(update_rows(measure_updates(counts)), "ostree", "best of 3 in-process runs")
        return
    tree = ensure_tree()
    compile_bytecode()
    files, size = tree_stats(tree)
    with stage("warming the page cache"):
        warm(tree)
    times, disk = measure_deploys(tree, args.repeat, not args.skip_ostree)
    updates = measure_updates(counts)
    print_table(deploy_rows(times, disk, files, size) + update_rows(updates), "reference",
                f"best of {args.repeat} runs")


if __name__ == "__main__":
    main()
