"""Power cuts: every state-changing command, cut short at each of its filesystem changes.

A command runs once to count its filesystem mutations (N). Then, for k = 1..N, it runs
again on a fresh copy of the same sysroot and the "power" fails at mutation k: that
mutation and every later one raise, so no cleanup handler can tidy up. After each cut:

(a) what a bootloader reads is the complete old or the complete new configuration
    (GRUB: the slot file its stub chooses; systemd-boot: the entries it lists, see
    bootkit.boot.switch for the exact promise while two generations coexist);
(b) every visible entry's kernel, initramfs and deployment tree exist;
(c) at least one entry is visible;
(d) `bootkit status` and then `bootkit bootloader update` succeed and leave a tidy
    sysroot whose menu is the old or the new one.

Finalizing a staged deployment is cut the same way; after each cut the machine
reboots: the run directory is empty, and `bootkit finalize-staged --boot` runs first.
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import stat
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from support.helpers import (
    bls_entries,
    deploy_tree,
    deployment_path,
    entry_name,
    grub_initrds,
    grub_menu,
    grub_slot_text,
    init_sysroot,
    make_tree,
    ok,
    refs_of_entries,
    sdboot_menu,
    untidy,
)

from bootkit import contract
from bootkit.boot.bootdir import BootDir
from bootkit.cli import main
from bootkit.formats import grubscript
from bootkit.formats.bls import blscfg_order
from bootkit.records import staged
from bootkit.sysroot.layout import Sysroot

BOOTLOADERS = ["systemd-boot", "grub"]

COMMANDS: dict[str, list[str]] = {
    "deploy": ["deploy", "{tree}"],
    "rollback": ["rollback"],
    "set-default": ["set-default", "1"],
    "undeploy": ["undeploy", "2"],
    "cleanup": ["cleanup", "--keep", "1"],
    "bootloader update": ["bootloader", "update"],
}

# Filled by the tests, printed when the module is done.
MUTATIONS: dict[tuple[str, str], int] = {}


class PowerCut(BaseException):
    """Raised at and after the chosen mutation; BaseException, so `except Exception` misses it."""


class Disk:
    """Counts filesystem mutations; from mutation `cut_at` on, every one raises PowerCut."""

    def __init__(self, cut_at: int | None = None) -> None:
        self.count = 0
        self.cut_at = cut_at
        self.cut = False

    def mutate(self, what: str) -> None:
        self.count += 1
        if self.cut or (self.cut_at is not None and self.count >= self.cut_at):
            self.cut = True
            raise PowerCut(f"mutation {self.count}: {what}")


_OS_MUTATIONS = [
    "rename",
    "replace",
    "unlink",
    "remove",
    "rmdir",
    "mkdir",
    "symlink",
    "link",
    "write",
    "pwrite",
    "truncate",
    "ftruncate",
    "chmod",
    "fchmod",
    "sendfile",
    "mkfifo",
    "mknod",
]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _WriteCounting:
    """A file opened for writing whose writes count as mutations."""

    def __init__(self, f: Any, disk: Disk) -> None:
        self._f, self._disk = f, disk

    def write(self, data: Any) -> int:
        self._disk.mutate("write")
        return self._f.write(data)

    def writelines(self, lines: Any) -> None:
        self._disk.mutate("write")
        self._f.writelines(lines)

    def __enter__(self) -> _WriteCounting:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _patch(monkeypatch: pytest.MonkeyPatch, disk: Disk) -> None:
    for name in _OS_MUTATIONS:
        real = getattr(os, name)

        def wrapper(
            *args: Any, _real: Callable[..., Any] = real, _name: str = name, **kw: Any
        ) -> Any:
            disk.mutate(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, wrapper)
    real_os_open = os.open

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & _WRITE_FLAGS:
            disk.mutate(f"open {path}")
        return real_os_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    real_open = builtins.open

    def open_(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if any(c in mode for c in "wax+"):
            disk.mutate(f"open {file}")
            return _WriteCounting(real_open(file, mode, *args, **kw), disk)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


@dataclass(frozen=True)
class BootConfig:
    """What the bootloaders read from $BOOT."""

    entries: list[tuple[str, str]]  # (file name, text) of each BLS entry, in systemd-boot order
    grub_slot: str | None  # the slot file the GRUB stub loads
    refs: list[str]  # deployments in menu order


def _config(boot: Path, bootloader: str) -> BootConfig:
    menu = sdboot_menu(boot)
    texts = [(f, (boot / "loader/entries" / f).read_text()) for f, _ in menu]
    slot = grub_slot_text(boot) if bootloader == "grub" else None
    return BootConfig(texts, slot, refs_of_entries(menu))


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not MUTATIONS:
        return
    lines = [
        "",
        "filesystem mutations per command (each one a power-cut point):",
        f"  {'command':<20}" + "".join(f"{b:>14}" for b in BOOTLOADERS),
    ]
    for command in COMMANDS:
        row = "".join(f"{MUTATIONS.get((command, b), '-')!s:>14}" for b in BOOTLOADERS)
        lines.append(f"  {command:<20}{row}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the sysroots live: tmpfs when there is one, where fsync costs nothing.

    The power cuts here are simulated, so durability is not what is tested, and the
    hundreds of runs would otherwise wait on the disk.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="bootkit-crash-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("scratch")


@pytest.fixture(scope="module")
def templates(scratch: Path) -> dict[str, Path]:
    """Per bootloader: a sysroot with deployments 1 and 3 sharing a kernel, 2 with its own."""
    base = scratch / "templates"
    trees = [
        make_tree(base / f"tree{n}", version=f"{n}", kernel=kernel)
        for n, kernel in ((1, b"kernel A\n"), (2, b"kernel B\n"), (3, b"kernel A\n"))
    ]
    out = {}
    for bootloader in BOOTLOADERS:
        sysroot = base / bootloader / "sys"
        sysroot.mkdir(parents=True)
        init_sysroot(sysroot, bootloader)
        for tree in trees:
            deploy_tree(Sysroot(sysroot), tree)
        assert not untidy(Sysroot(sysroot))
        out[bootloader] = sysroot
        legacy = base / bootloader / "legacy"
        subprocess.run(["cp", "-a", sysroot, legacy], check=True)
        _to_old_names(legacy / "efi", Sysroot(legacy).state().generation)
        out[f"{bootloader} old names"] = legacy
    return out


def _to_old_names(boot: Path, generation: int) -> None:
    """Name the entries as bootkit did before: generation and menu rank."""
    for rank, (fname, _) in enumerate(sdboot_menu(boot)):
        path = boot / "loader/entries" / fname
        name = replace(entry_name(fname), generation=generation, legacy_rank=rank)
        lines = [f"sort-key {name.sort_key}" if line.startswith("sort-key ") else line
                 for line in path.read_text().splitlines()]
        path.with_name(name.filename).write_text("\n".join(lines) + "\n")
        path.unlink()


@pytest.fixture(scope="module")
def new_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(
        tmp_path_factory.mktemp("source") / "tree",
        version="4",
        kernel=b"kernel D\n",
        files={"usr/share/new-in-4": "new\n", "usr/lib/os-release-extra": "x\n"},
    )


def _fresh(template: Path, dest: Path) -> Path:
    """Copy `template` to `dest`, keeping hardlinks (the object store relies on link counts)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    inodes: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(template):
        target = os.path.normpath(os.path.join(dest, os.path.relpath(dirpath, template)))
        os.mkdir(target)
        dirs.append((target, os.lstat(dirpath)))
        for name in [*dirnames, *filenames]:
            src, dst = os.path.join(dirpath, name), os.path.join(target, name)
            st = os.lstat(src)
            if stat.S_ISDIR(st.st_mode):
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif (st.st_dev, st.st_ino) in inodes:
                os.link(inodes[st.st_dev, st.st_ino], dst)
            else:
                shutil.copyfile(src, dst)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                inodes[st.st_dev, st.st_ino] = dst
    # Directory modes last: read-only ones must first take their children.
    for target, st in reversed(dirs):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    return dest


def _run(argv: list[str], sysroot: Path, tree: Path) -> None:
    args = [a.format(tree=tree) for a in argv]
    main.main(args=[*args[:2], *args[2:], "--sysroot", str(sysroot)], standalone_mode=False)


def _check_visible(
    boot: Path, bootloader: str, old: BootConfig, new: BootConfig, sysroot: Path
) -> None:
    entries = bls_entries(boot)
    # (c) something to boot.
    assert entries, "no boot entry is visible"
    # (b) everything a visible entry needs is there.
    for fname, entry in entries:
        for path in (entry.linux, *entry.initrd):
            assert (boot / path.lstrip("/")).is_file(), f"{fname}: {path} is missing"
        tree = sysroot / deployment_path(entry.options).lstrip("/")
        assert (tree / "usr/bin/hello").is_file(), f"{fname}: its deployment {tree} is gone"
    # (a) systemd-boot and GRUB's blscfg: every entry is one of the old or the new
    # menu; what sorts first is the old default with the whole old menu listed, or the
    # new default with the whole new menu (see bootkit.boot.switch).
    texts = {f: (boot / "loader/entries" / f).read_text() for f, _ in entries}
    allowed = set(old.entries) | set(new.entries)
    assert {(f, texts[f]) for f in texts} <= allowed, sorted(set(texts.items()) - allowed)
    listed = set(refs_of_entries(entries))
    firsts = {sdboot_menu(boot)[0][0], blscfg_order(list(texts))[0]}
    assert len(firsts) == 1, f"the bootloaders boot different entries: {firsts}"
    (first_name,) = firsts
    first = (first_name, texts[first_name])
    old_shown = first == old.entries[0] and set(old.refs) <= listed
    new_shown = first == new.entries[0] and set(new.refs) <= listed
    assert old_shown or new_shown, f"{first_name} boots first, with {sorted(listed)} listed"
    menu = sdboot_menu(boot)
    assert menu[0][0] == first[0], "systemd-boot would not boot the default"
    if bootloader == "grub":
        slot = grub_slot_text(boot)
        assert slot in (old.grub_slot, new.grub_slot), "GRUB would load a mixed menu"
        assert slot is not None
        assert (boot / "grub/grub.cfg").read_text() == grubscript.render_stub()
        for _, linux in grub_menu(boot):
            assert (boot / linux.split()[0].lstrip("/")).is_file()
        for initrd in grub_initrds(slot):
            assert (boot / initrd.lstrip("/")).is_file()
    else:
        assert (boot / "loader/loader.conf").read_text().startswith("timeout ")


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_power_cut_at_every_mutation(
    command: str,
    bootloader: str,
    templates: dict[str, Path],
    new_tree: Path,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp_path = scratch / f"{command}-{bootloader}".replace(" ", "-")
    # With nothing to change, an update writes nothing: it is cut while it replaces
    # the entries of the old name format instead.
    template = templates[f"{bootloader} old names" if command == "bootloader update" else bootloader]
    boot_rel = Path("efi")
    old = _config(template / boot_rel, bootloader)

    # The uncut run: how many mutations, and what it leaves.
    sysroot = _fresh(template, tmp_path / "sys")
    disk = Disk()
    with monkeypatch.context() as m:
        _patch(m, disk)
        _run(COMMANDS[command], sysroot, new_tree)
    n = disk.count
    MUTATIONS[(command, bootloader)] = n
    assert n > 0
    new = _config(sysroot / boot_rel, bootloader)
    assert not untidy(Sysroot(sysroot))
    if command != "bootloader update":
        assert new.refs != old.refs

    def cut_at(k: int, workdir: Path) -> None:
        sysroot = _fresh(template, workdir / "sys")
        with pytest.MonkeyPatch.context() as m:
            _patch(m, Disk(cut_at=k))
            with pytest.raises(PowerCut):
                _run(COMMANDS[command], sysroot, new_tree)
        _check_visible(sysroot / boot_rel, bootloader, old, new, sysroot)
        ok("status", "--sysroot", sysroot)
        ok("bootloader", "update", "--sysroot", sysroot)
        assert untidy(Sysroot(sysroot)) == []
        after = _config(sysroot / boot_rel, bootloader)
        assert after.refs in (old.refs, new.refs)

    _each_cut(range(1, n + 1), cut_at, tmp_path, f"{command} ({bootloader})")


@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_power_cut_while_finalizing(
    bootloader: str, templates: dict[str, Path], new_tree: Path, scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp_path = scratch / f"finalize-{bootloader}"
    base = _fresh(templates[bootloader], tmp_path / "base")
    deploy_tree(Sysroot(base), new_tree, stage=True)
    record = staged.load_run_record()
    assert record is not None
    old = _config(base / "efi", bootloader)

    def staged_copy(dest: Path) -> Path:
        """A copy of `base` with the run record that names it, in a run dir of its own."""
        sysroot = _fresh(base, dest / "sys")
        monkeypatch.setattr(contract, "RUN_DIR", dest / "run")
        staged.save_run_record(replace(record, sysroot=str(sysroot)))
        return sysroot

    sysroot = staged_copy(tmp_path / "uncut")
    disk = Disk()
    with monkeypatch.context() as m:
        _patch(m, disk)
        _run(["finalize-staged"], sysroot, new_tree)
    new = _config(sysroot / "efi", bootloader)
    assert new.refs[0] == record.ref and new.refs[1:] == old.refs
    assert not untidy(Sysroot(sysroot))

    def cut_at(k: int, workdir: Path) -> None:
        sysroot = staged_copy(workdir)
        with pytest.MonkeyPatch.context() as m:
            _patch(m, Disk(cut_at=k))
            with pytest.raises(PowerCut):
                _run(["finalize-staged"], sysroot, new_tree)
        _check_visible(sysroot / "efi", bootloader, old, new, sysroot)
        staged.run_record_path().unlink(missing_ok=True)  # the reboot
        ok("finalize-staged", "--boot", "--sysroot", sysroot)
        ok("bootloader", "update", "--sysroot", sysroot)
        assert untidy(Sysroot(sysroot)) == []
        assert _config(sysroot / "efi", bootloader).refs in (old.refs, new.refs)

    _each_cut(range(1, disk.count + 1), cut_at, tmp_path, f"finalize ({bootloader})")


def _each_cut(ks: range, body: Callable[[int, Path], None], workdir: Path, what: str) -> None:
    """Run body(k, dir) for every k, spread over forked workers, one per CPU.

    Each worker reports its first failure; the test fails with all of them.
    """
    workers = min(os.cpu_count() or 1, 4, len(ks))
    pipes = []
    for w in range(workers):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(rfd)
            message = ""
            try:
                for k in ks[w::workers]:
                    try:
                        body(k, workdir / f"worker-{w}")
                    except BaseException as err:
                        detail = "".join(traceback.format_exception(err, limit=-3))
                        message = f"{what} cut at mutation {k} of {len(ks)}: {detail}"
                        break
            finally:
                with os.fdopen(wfd, "w") as out:
                    out.write(message)
                os._exit(0)
        os.close(wfd)
        pipes.append((pid, rfd))
    failures = []
    for pid, rfd in pipes:
        with os.fdopen(rfd) as inp:
            message = inp.read()
        _, status = os.waitpid(pid, 0)
        if message:
            failures.append(message)
        elif status != 0:
            failures.append(f"{what}: worker died with status {status}")
    assert not failures, "\n".join(failures)


def test_recovery_cut_short_keeps_what_the_menu_shows(
    templates: dict[str, Path], new_tree: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second power cut, during the repair of the first, still leaves a bootable menu.

    The first cut comes right after `undeploy` recorded its intent, while $BOOT still
    lists the deployment it removes; the repair must not delete that tree before the
    menu stops showing it.
    """
    tmp_path = scratch / "recovery"
    template = templates["systemd-boot"]
    base = _fresh(template, tmp_path / "base")
    disk = Disk()
    with monkeypatch.context() as m:
        _patch(m, disk)

        def switch(*args: Any, **kw: Any) -> None:
            disk.cut = True
            raise PowerCut("before the switch")

        m.setattr(BootDir, "switch", switch)
        with pytest.raises(PowerCut):
            _run(COMMANDS["undeploy"], base, new_tree)
    old = _config(base / "efi", "systemd-boot")
    assert "test/2" in " ".join(old.refs)

    disk = Disk()
    probe = _fresh(base, tmp_path / "probe")
    with monkeypatch.context() as m:
        _patch(m, disk)
        _run(COMMANDS["bootloader update"], probe, new_tree)
    new = _config(probe / "efi", "systemd-boot")

    def cut_at(k: int, workdir: Path) -> None:
        sysroot = _fresh(base, workdir / "sys")
        with pytest.MonkeyPatch.context() as m:
            _patch(m, Disk(cut_at=k))
            with pytest.raises(PowerCut):
                _run(COMMANDS["bootloader update"], sysroot, new_tree)
        _check_visible(sysroot / "efi", "systemd-boot", old, new, sysroot)

    _each_cut(range(1, disk.count + 1), cut_at, tmp_path, "repair")
