"""How a deploy scales with the number of files: time and peak memory for a tree of
many small files, against `cp -a` of the same tree.

    .venv/bin/python benchmarks/scale.py [--counts 10000,100000,1000000] [--cache DIR]

For each count N, a generated OS tree (os-release, a small fake kernel and initramfs
in usr/lib/modules/<kver>/, and N small files of 1 byte to 4 KiB, each with its own
content so that the store cannot share them, in directories of 1000 under
usr/share/many/) is deployed by `bootkit deploy` into a fresh sysroot, through the
CLI in a child process; the row shows its wall time, the child's peak RSS and the
time per file. Beside it: `cp -a` of the same tree into the same filesystem.

Targets: peak memory < 500 MB at every count; time linear in the file count: the
time per file of the largest count within 1.5x that of 100k files (or of the
smallest count measured, without 100k).

The trees are cached under DIR/many-<N> (default: .cache/bench/ of this checkout);
1M files take about 5 GB and 1M inodes, and each deploy and copy as much again
while it is measured. The page cache is warmed by reading each tree first, and
every measurement is its own child process, waited for with wait4, so that one
child's peak is never counted in another's.
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bootkit_testing.benchtable import Row, print_table

REPO = Path(__file__).resolve().parents[1]
KVER = "6.1.0-bench"
FILES_PER_DIR = 1000
DIRS_PER_DIR = 100
MAX_SIZE = 4096
MEMORY_LIMIT = 500e6
LINEAR_SLACK = 1.5


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the trees ------------------------------------------------------------------------------


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _base_tree(root: str) -> None:
    """What `bootkit deploy` wants of an OS tree besides the many files."""
    mods = f"{root}/usr/lib/modules/{KVER}"
    os.makedirs(mods)
    os.makedirs(f"{root}/usr/etc")
    _write(f"{root}/usr/lib/os-release",
           b'ID=bench\nNAME="Scale bench"\nVERSION_ID=1\nPRETTY_NAME="Scale bench 1"\n')
    _write(f"{root}/usr/etc/hostname", b"bench\n")
    # Deploy copies these to $BOOT without looking inside: a few bytes do.
    _write(f"{mods}/vmlinuz", b"not a real kernel\n")
    _write(f"{mods}/initramfs.img", b"not a real initramfs\n")


def _many_files(root: str, count: int) -> None:
    """`count` files of distinct content, 1000 to a directory, two levels of those."""
    rng = random.Random(count)
    pool = rng.randbytes(1 << 22)
    top = f"{root}/usr/share/many"
    directory = ""
    for i in range(count):
        if i % FILES_PER_DIR == 0:
            n = i // FILES_PER_DIR
            directory = f"{top}/{n // DIRS_PER_DIR:03d}/{n % DIRS_PER_DIR:02d}"
            os.makedirs(directory)
        size = rng.randrange(MAX_SIZE)
        start = rng.randrange(len(pool) - size)
        # The number first: no two files have the same content.
        _write(f"{directory}/f{i % FILES_PER_DIR:04d}", b"%d\n" % i + pool[start:start + size])


def ensure_tree(cache: Path, count: int) -> Path:
    """The tree of `count` files, generated once under a temporary name, then renamed."""
    tree = cache / f"many-{count}"
    if tree.is_dir():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".many-{count}.", dir=cache))
    log(f"generating {count} files in {tmp}")
    start = time.perf_counter()
    try:
        _base_tree(str(tmp))
        _many_files(str(tmp), count)
        os.chmod(tmp, 0o755)
        tmp.rename(tree)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"generated {tree} in {time.perf_counter() - start:.0f} s")
    return tree


def warm(tree: Path) -> None:
    """Read the whole tree once, so that neither contender pays for the cold read."""
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(tree), "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    while tar.stdout.read(1 << 20):
        pass
    if tar.wait() != 0:
        raise SystemExit(f"bench: reading {tree} failed")


# --- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes


def measure(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Wall time and peak RSS of one child running `argv` in `cwd`, which must succeed."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, cwd=cwd)
        # wait4 gives this child's own rusage: no earlier child's peak is mixed in.
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            raise SystemExit(f"bench: {' '.join(argv)} failed:\n{out.read().decode(errors='replace')}")
    return Measured(seconds, usage.ru_maxrss * 1024)


def bootkit_env() -> dict[str, str]:
    """The environment of a bootkit child. Each runs in its own work directory, which
    `-c` puts first on its path: no bootkit is found there, so the child imports the
    one this interpreter would (a checkout named by PYTHONPATH, say)."""
    return {**os.environ, "BOOTKIT_NO_PROGRESS": "1"}


def bootkit_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())",
            *args]


def remove(path: Path) -> None:
    """Remove a run's sysroot and copy, once both are measured: removing them takes
    as long as making them, and must not run beside a measurement."""
    # rm is several times quicker than shutil.rmtree on a million files.
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def measure_bootkit(tree: Path, work: Path) -> Measured:
    sysroot = work / "sysroot"
    sysroot.mkdir()
    env = bootkit_env()
    measure(bootkit_cli("init", "--sysroot", str(sysroot), "--os", "bench",
                        "--bootloader", "systemd-boot"), env, work)
    subprocess.run(["sync"], check=True)
    return measure(bootkit_cli("deploy", "--sysroot", str(sysroot), str(tree)), env, work)


def measure_cp(tree: Path, work: Path) -> Measured:
    subprocess.run(["sync"], check=True)
    return measure(["cp", "-a", str(tree), str(work / "copy")])


def compile_bytecode() -> None:
    """Compile bootkit's modules once, as an installed bootkit has them."""
    import bootkit

    if not compileall.compile_dir(Path(bootkit.__file__).parent, quiet=1):
        raise SystemExit("bench: bootkit's modules do not compile")


# --- the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def cell(m: Measured, count: int) -> str:
    return f"{fmt_s(m.seconds)}, {m.peak_rss / 1e6:.0f} MB, {m.seconds / count * 1e6:.1f} us/file"


def rows(results: dict[int, tuple[Measured, Measured]]) -> list[Row]:
    counts = sorted(results)
    base = 100_000 if 100_000 in results else counts[0]
    per_file = {n: results[n][0].seconds / n for n in counts}
    table: list[Row] = []
    for n in counts:
        mine, cp = results[n]
        target = f"< 500 MB: {verdict(mine.peak_rss < MEMORY_LIMIT)}"
        if n > base:
            ratio = per_file[n] / per_file[base]
            target += f"; {ratio:.2f}x time/file of {base}: {verdict(ratio <= LINEAR_SLACK)}"
        table.append((f"deploy {n} files", cell(mine, n), cell(cp, n), target))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="10000,100000,1000000",
                        help="File counts, comma-separated.")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench",
                        help="Where the generated trees are kept, and the runs made.")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    compile_bytecode()
    results: dict[int, tuple[Measured, Measured]] = {}
    works: list[Path] = []
    try:
        for count in counts:
            tree = ensure_tree(args.cache, count)
            warm(tree)
            works.append(work := Path(tempfile.mkdtemp(prefix="scale-run.", dir=args.cache)))
            log(f"{count} files: bootkit deploy")
            mine = measure_bootkit(tree, work)
            log(f"{count} files: bootkit {cell(mine, count)}; cp -a")
            results[count] = (mine, measure_cp(tree, work))
            log(f"{count} files: cp -a {cell(results[count][1], count)}")
        print_table(rows(results), "cp -a", "one run each; time, peak RSS, time per file")
    finally:
        for work in works:
            remove(work)


if __name__ == "__main__":
    main()
