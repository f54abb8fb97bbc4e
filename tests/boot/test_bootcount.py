"""Boot counting: counters in entry names and grubenv, carried across generations;
bad defaults replaced; GRUB's count-down script; marking a boot good (Python and sh)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support.helpers import REPO, booted, fails, grub_slot_text, make_tree, ok

from bootkit.boot import counting, switch
from bootkit.boot.counting import Counter
from bootkit.errors import BootkitError
from bootkit.formats import grubenv, grubscript
from bootkit.formats.bls import DEFAULT, ENTRIES_DIR, OTHER, EntryName
from bootkit.formats.bootvalues import MAX_TRIES
from bootkit.records.config import SysrootConfig
from bootkit.sysroot.layout import Sysroot

VENDOR = counting.LOADER_VENDOR
SCRIPT = REPO / "bootkit/data/bootkit-mark-good"


# --- a sysroot with deployments -------------------------------------------------------


class Machine:
    """A sysroot plus what its bootloader would do to $BOOT between commands."""

    def __init__(self, root: Path, bootloader: str, tries: int | None = None) -> None:
        root.mkdir()
        args = ["init", "--sysroot", root, "--os", "test", "--bootloader", bootloader]
        ok(*args, *(["--tries", str(tries)] if tries is not None else []))
        self.root = root
        self.sr = Sysroot(root)
        self.boot = root / "efi"
        self.trees = root.parent / f"trees-{root.name}"
        self.count = 0

    def deploy(self, *args: str) -> str:
        """Deploy a new tree; its ref."""
        self.count += 1
        tree = make_tree(self.trees / str(self.count), version=str(self.count),
                         kernel=f"kernel {self.count}\n".encode())
        out = json.loads(ok("deploy", "--sysroot", self.root, tree, "--json", *args).stdout)
        return f"{out['os']}/{out['id']}"

    def status(self) -> dict[str, dict]:
        """By ref, in menu order."""
        rows = json.loads(ok("status", "--sysroot", self.root, "--json").stdout)["deployments"]
        return {f"{r['os']}/{r['id']}": r for r in rows}

    def entry(self, ref: str) -> Path:
        return self.boot / ENTRIES_DIR / self.status()[ref]["entry"]

    def systemd_boot_tries(self, ref: str) -> str:
        """Boot `ref` once as systemd-boot does: +LEFT-DONE counts one try. The new name."""
        path = self.entry(ref)
        name = EntryName.parse(path.name)
        assert name is not None and name.tries_left, path.name
        new = replace(name, tries_left=name.tries_left - 1,
                      tries_done=(name.tries_done or 0) + 1)
        path.rename(path.with_name(new.filename))
        return new.filename

    def grubenv(self) -> dict[str, str]:
        return grubenv.read(self.boot / grubscript.GRUBENV.lstrip("/"))

    def entry_names(self) -> list[str]:
        return sorted(os.listdir(self.boot / ENTRIES_DIR))


@pytest.fixture
def sdboot(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "sd", "systemd-boot")


@pytest.fixture
def grub(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "grub", "grub", tries=2)


# --- counters in entry names ----------------------------------------------------------


def test_new_entries_are_counted_by_default(sdboot: Machine) -> None:
    a = sdboot.deploy()
    assert sdboot.sr.config.tries == 3
    assert sdboot.entry(a).name.endswith("+3.conf")
    row = sdboot.status()[a]
    assert (row["boot"], row["tries_left"], row["tries_done"]) == ("indeterminate", 3, None)


def test_tries_option_and_zero_turns_counting_off(tmp_path: Path) -> None:
    m = Machine(tmp_path / "m", "systemd-boot", tries=0)
    a = m.deploy()
    b = m.deploy("--tries", "5")
    assert "+" not in m.entry(a).name
    assert m.entry(b).name.endswith("+5.conf")
    c = m.deploy("--tries", "0")
    assert "+" not in m.entry(c).name
    assert m.status()[c]["boot"] == "good"
    for tries in (-1, MAX_TRIES + 1, True, "3"):
        with pytest.raises(BootkitError, match=f"from 0 to {MAX_TRIES}"):
            SysrootConfig(os="test", bootloader="grub", tries=tries)  # type: ignore[arg-type]


def test_counters_carry_over_to_the_next_generation(sdboot: Machine) -> None:
    a = sdboot.deploy()
    counted = sdboot.systemd_boot_tries(a)  # +3 -> +2-1
    assert counted.endswith("+2-1.conf")
    b = sdboot.deploy()
    names = sdboot.entry_names()
    assert len(names) == 2, names
    # Demoted from the default, `a` has a new name; its counter comes along.
    before, after = EntryName.parse(counted), EntryName.parse(sdboot.entry(a).name)
    assert before is not None and after is not None
    assert (before.cls, after.cls) == (DEFAULT, OTHER)
    assert (after.tries_left, after.tries_done, after.tail) == (2, 1, before.tail)
    assert sdboot.entry(b).name.endswith("+3.conf")
    # Marked good (no counter) stays good through later generations.
    good = sdboot.entry(a)
    good.rename(good.with_name(counting.uncounted(good.name) or ""))
    ok("bootloader", "update", "--sysroot", sdboot.root)
    assert "+" not in sdboot.entry(a).name
    assert sdboot.status()[a]["boot"] == "good"
    assert sdboot.entry(b).name.endswith("+3.conf")


def test_bad_default_is_replaced_by_the_next_transaction(sdboot: Machine) -> None:
    a = sdboot.deploy()
    b = sdboot.deploy()
    c = sdboot.deploy("--no-default")  # newest, never booted
    for _ in range(3):
        sdboot.systemd_boot_tries(b)
    status = sdboot.status()
    assert status[b]["default"] and status[b]["boot"] == "bad" and status[b]["tries_done"] == 3
    text = ok("status", "--sysroot", sdboot.root)
    assert "failed to boot" in text.stderr and f"boots {c} instead" in text.stderr
    assert "bad: no boot tries left, tried 3 times" in text.stdout
    result = ok("bootloader", "update", "--sysroot", sdboot.root)
    assert f"the default deployment {b} failed to boot" in result.stderr
    status = sdboot.status()
    # The first deployment in menu order that is not bad: what the bootloader booted.
    assert list(status) == [c, a, b]
    assert status[c]["default"]
    assert sdboot.entry(b).name.endswith("+0-3.conf")
    # It stays out of the way of later transactions, and is not chosen by rollback.
    ok("rollback", "--sysroot", sdboot.root)
    assert list(sdboot.status()) == [a, c, b]
    ok("rollback", "--sysroot", sdboot.root)
    assert list(sdboot.status()) == [c, a, b]
    # set-default tries it again, with fresh tries.
    ok("set-default", "--sysroot", sdboot.root, b)
    status = sdboot.status()
    assert list(status) == [b, c, a]
    assert sdboot.entry(b).name.endswith("+3.conf") and status[b]["boot"] == "indeterminate"


def test_rollback_refuses_when_every_other_deployment_is_bad(sdboot: Machine) -> None:
    a = sdboot.deploy()
    sdboot.deploy()
    for _ in range(3):
        sdboot.systemd_boot_tries(a)
    assert "every other deployment failed to boot" in fails("rollback", "--sysroot", sdboot.root)


def test_set_default_keeps_a_good_entry_good(sdboot: Machine) -> None:
    a = sdboot.deploy()
    good = sdboot.entry(a)
    good.rename(good.with_name(counting.uncounted(good.name) or ""))
    sdboot.deploy()
    ok("set-default", "--sysroot", sdboot.root, a)
    assert "+" not in sdboot.entry(a).name


def test_plan_and_menu_order() -> None:
    from bootkit.records.deployment import Deployment

    def dep(n: int) -> Deployment:
        return Deployment("os", f"{n}-x", str(n), "src", "k", "p", "T", 0.0, n)

    a, b, c = dep(1), dep(2), dep(3)
    current = {a.path: Counter(), b.path: Counter(0, 3)}
    plan = counting.plan([a, b, c], b.ref, current, 2, {})
    assert plan.demoted == b.ref and plan.default == c.ref
    assert plan.counters == {a.ref: Counter(), b.ref: Counter(0, 3), c.ref: Counter(2)}
    assert [d.ref for d in counting.menu_order([a, b, c], a.ref, plan.counters)] == [
        a.ref, c.ref, b.ref,
    ]
    # Re-armed explicitly: no demotion, fresh tries.
    plan = counting.plan([a, b, c], b.ref, current, 2, {b.ref: 4})
    assert plan.demoted is None and plan.counters[b.ref] == Counter(4)
    # Nothing better to fall back to: the default stays.
    plan = counting.plan([b], b.ref, current, 2, {})
    assert plan.demoted is None and plan.default == b.ref


def test_counter_words() -> None:
    assert Counter().describe() == "good"
    assert Counter(1, 2).describe() == "1 boot try left (tried 2 times), not yet marked good"
    assert Counter(0, 1).describe() == "bad: no boot tries left, tried 1 time"
    assert counting.uncounted("bootkit-1-2-os-3+2-1.conf") == "bootkit-1-2-os-3.conf"
    assert counting.uncounted("x+0.efi") == "x.efi"
    assert counting.uncounted("bootkit-1-2-os-3.conf") is None


def test_a_concurrent_rename_leaves_no_stale_entry(sdboot: Machine, monkeypatch) -> None:
    a = sdboot.deploy()
    old = sdboot.entry(a)
    real = switch.syncfs

    def bless_meanwhile(path: Path) -> None:
        # systemd-bless-boot renames the old generation's entry while the switch runs.
        if old.exists():
            old.rename(old.with_name(counting.uncounted(old.name) or ""))
        real(path)

    monkeypatch.setattr(switch, "syncfs", bless_meanwhile)
    b = sdboot.deploy()
    names = sdboot.entry_names()
    parsed = [EntryName.parse(n) for n in names]
    assert len(names) == 2 and all(parsed), names
    gens = {n.generation for n in parsed if n}
    assert len(gens) == 1
    # The mark came after the counters were read; the new generation keeps it.
    status = sdboot.status()
    assert (status[a]["boot"], status[b]["boot"]) == ("good", "indeterminate")


def test_a_concurrent_mark_good_survives_the_switch_grub(grub: Machine, monkeypatch) -> None:
    a = grub.deploy()
    assert grub.grubenv()[grubscript.TRIES_VAR] == "2"
    dep = grub.sr.load(a)
    real = switch.syncfs

    def mark_meanwhile(path: Path) -> None:
        # bootkit-mark-good.service runs while the switch's new files are being written.
        if grub.grubenv().get(grubscript.TRIES_VAR):
            grub.sr.boot.mark_good(dep)
        real(path)

    monkeypatch.setattr(switch, "syncfs", mark_meanwhile)
    # A new timeout changes the slot file, so that the update switches (an unchanged
    # menu is left alone, and no switch would run for the mark to race with).
    replace(grub.sr.config, timeout=grub.sr.config.timeout + 1).save(grub.sr.config_path)
    ok("bootloader", "update", "--sysroot", grub.root)
    assert grub.status()[a]["boot"] == "good"
    assert grubscript.TRIES_VAR not in grub.grubenv()
    assert all("+" not in n for n in grub.entry_names())


# --- GRUB ----------------------------------------------------------------------------


class GrubScript:
    """Runs the part of GRUB's script language bootkit's slot files use.

    Enough to boot a slot file as GRUB does: `set`, `load_env`/`save_env` (on the real
    grubenv file), `echo`, `if`/`elif`/`else`/`fi` with `[ ]` tests joined by `-a`,
    and `menuentry` blocks, whose bodies run when that entry boots.
    """

    def __init__(self, boot: Path) -> None:
        self.boot = boot
        self.vars: dict[str, str] = {}
        self.menu: list[tuple[str, list[str]]] = []
        self.echoed: list[str] = []
        self.kernel: str | None = None

    def words(self, line: str) -> list[str]:
        # The scripts never put `$` inside single quotes, so expanding first is safe.
        for name in sorted(self.vars, key=len, reverse=True):
            line = line.replace(f"${name}", self.vars[name])
        line = re.sub(r"\$[A-Za-z_]\w*", "", line)
        return shlex.split(line)

    def test(self, words: list[str]) -> bool:
        assert words[0] == "[" and words[-1] == "]", words
        words = words[1:-1]
        parts: list[list[str]] = [[]]
        for w in words:
            if w == "-a":
                parts.append([])
            else:
                parts[-1].append(w)
        return all(self.primary(p) for p in parts)

    def primary(self, p: list[str]) -> bool:
        if p[0] == "-n":
            return p[1] != ""
        if p[0] == "-z":
            return p[1] == ""
        if p[0] == "-f":
            return (self.boot / p[1].lstrip("/")).is_file()
        if p[1] == "=":
            return p[0] == p[2]
        if p[1] == "!=":
            return p[0] != p[2]
        raise AssertionError(f"unknown test {p}")

    def run(self, lines: list[str]) -> None:
        stack: list[list[bool]] = []  # [taking now, taken already]
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            active = all(s[0] for s in stack)
            if not line or line.startswith("#"):
                continue
            if line.startswith("menuentry "):
                body = []
                while lines[i].strip() != "}":
                    body.append(lines[i])
                    i += 1
                i += 1
                if active:
                    entry_id = line.split("--id ", 1)[1].split()[0].strip("'")
                    self.menu.append((entry_id, body))
                continue
            head = line.split()[0]
            if head == "if":
                taking = active and self.test(self.words(line[3:].removesuffix("; then")))
                stack.append([taking, taking])
            elif head == "elif":
                top = stack[-1]
                outer = all(s[0] for s in stack[:-1])
                top[0] = outer and not top[1] and self.test(
                    self.words(line[5:].removesuffix("; then"))
                )
                top[1] = top[1] or top[0]
            elif head == "else":
                top = stack[-1]
                top[0], top[1] = not top[1], True
            elif head == "fi":
                stack.pop()
            elif active:
                self.command(self.words(line))
        assert not stack, "unbalanced if"

    def command(self, w: list[str]) -> None:
        env_file = self.boot / grubscript.GRUBENV.lstrip("/")
        if w[0] == "set":
            name, _, value = w[1].partition("=")
            self.vars[name] = value
        elif w[0] == "load_env":
            assert w[1:3] == ["-f", grubscript.GRUBENV]
            env = grubenv.read(env_file)
            wanted = w[3:] or list(env)
            self.vars.update({k: v for k, v in env.items() if k in wanted})
        elif w[0] == "save_env":
            assert w[1:3] == ["-f", grubscript.GRUBENV]
            env = grubenv.read(env_file)
            env.update({k: self.vars.get(k, "") for k in w[3:]})
            grubenv.write(env_file, env)
        elif w[0] == "echo":
            self.echoed.append(" ".join(w[1:]))
        elif w[0] in ("linux", "chainloader"):
            self.kernel = w[1]
        elif w[0] not in ("initrd", "true"):
            raise AssertionError(f"unexpected GRUB command {w}")

    def boot_default(self) -> str:
        """Run the slot file and boot the entry it chooses; that entry's id."""
        self.run(self.text().splitlines())
        default = self.vars.get("default", "0")
        index = int(default) if default.isdigit() else [i for i, _ in self.menu].index(default)
        entry_id, body = self.menu[index]
        entry = GrubScript(self.boot)  # a menu entry runs in a context of its own
        entry.run(body)
        self.echoed += entry.echoed
        return entry_id

    def text(self) -> str:
        text = grub_slot_text(self.boot)
        assert text is not None
        return text


def grub_boot(m: Machine) -> tuple[str, list[str]]:
    script = GrubScript(m.boot)
    entry = script.boot_default()
    return entry, script.echoed


def menu_id(ref: str) -> str:
    return "bootkit-" + ref.replace("/", "-")


def test_grub_counts_down_then_boots_the_previous_entry(grub: Machine) -> None:
    a = grub.deploy()
    # Nothing marks a good: it counts down too while it is the default.
    assert grub.grubenv()[grubscript.TRIES_VAR] == "2"
    b = grub.deploy()
    env = grub.grubenv()
    assert env == {grubscript.COUNTED_VAR: grub.sr.load(b).path, grubscript.TRIES_VAR: "2"}
    assert grub_boot(grub) == (menu_id(b), [f"bootkit: boot tries left for {menu_id(b)}: 1"])
    assert grub.status()[b]["tries_left"] == 1
    assert grub_boot(grub) == (menu_id(b), [f"bootkit: boot tries left for {menu_id(b)}: 0"])
    status = grub.status()
    assert status[b]["default"] and status[b]["boot"] == "bad" and status[b]["tries_done"] == 2
    assert grub_boot(grub) == (menu_id(a), [
        f"bootkit: no boot tries left for {menu_id(b)}",
        f"bootkit: booting {menu_id(a)} instead",
    ])
    assert grub.grubenv()[grubscript.TRIES_VAR] == "0"  # the fallback boot counts nothing
    # The next transaction: a becomes the default; b's counter goes into its entry name.
    result = ok("bootloader", "update", "--sysroot", grub.root)
    assert f"the default deployment {b} failed to boot" in result.stderr
    assert list(grub.status()) == [a, b]
    assert grub.entry(b).name.endswith("+0-2.conf")
    # a's own counter, never counted down by GRUB while it was not the default.
    assert grub.grubenv() == {grubscript.COUNTED_VAR: grub.sr.load(a).path, grubscript.TRIES_VAR: "2"}
    assert grub_boot(grub)[0] == menu_id(a)


def test_grub_marked_good_is_not_counted(grub: Machine) -> None:
    a = grub.deploy()
    env = grub.grubenv()
    env.pop(grubscript.TRIES_VAR)  # what bootkit-mark-good does
    grubenv.write(grub.boot / grubscript.GRUBENV.lstrip("/"), env)
    assert grub.status()[a]["boot"] == "good"
    assert grub_boot(grub) == (menu_id(a), [])
    b = grub.deploy()
    assert "+" not in grub.entry(a).name  # the grubenv verdict went into a's record
    assert grub.grubenv()[grubscript.COUNTED_VAR] == grub.sr.load(b).path
    ok("set-default", "--sysroot", grub.root, a)
    assert grub.grubenv() == {}  # a good default: nothing to count
    assert grubscript.TRIES_VAR not in (grub_slot_text(grub.boot) or "")
    assert grub_boot(grub) == (menu_id(a), [])


def test_grub_one_shot_choice_is_not_counted(grub: Machine) -> None:
    a = grub.deploy()
    b = grub.deploy()
    env = grub.grubenv()
    grubenv.write(grub.boot / grubscript.GRUBENV.lstrip("/"), {**env, "next_entry": menu_id(a)})
    assert grub_boot(grub) == (menu_id(a), [])
    assert grub.grubenv()[grubscript.TRIES_VAR] == "2"
    assert grub_boot(grub)[0] == menu_id(b)


def test_grub_unreadable_counter_counts_as_used_up(grub: Machine) -> None:
    a = grub.deploy()
    b = grub.deploy()
    env = {**grub.grubenv(), grubscript.TRIES_VAR: "many"}
    grubenv.write(grub.boot / grubscript.GRUBENV.lstrip("/"), env)
    assert grub_boot(grub)[0] == menu_id(a)
    assert grub.status()[b]["boot"] == "bad"


def test_grub_ladder_rendering() -> None:
    entries = [grubscript.MenuEntry(f"bootkit-os-{n}", f"T{n}", "/l", ("/i",), "o") for n in (2, 1)]
    text = grubscript.render_slot(7, entries, 3, grubscript.Counting("/bootkit/deploy/os/deploy/2", 3))
    body = text.split("menuentry T2 ", 1)[1].split("}", 1)[0]
    for n in (3, 2, 1):
        assert f'[ "$bootkit_tries" = {n} ]; then\n      set bootkit_tries={n - 1}\n' in body
    assert body.count("save_env") == 3
    assert body.index("save_env") < body.index("linux ")
    assert "set default=1" in text.split("menuentry", 1)[0]
    # One entry: nothing to fall back to, so it boots anyway.
    single = grubscript.render_slot(7, entries[:1], 3, grubscript.Counting("/x", 1))
    assert "set default=1" not in single and "no boot tries left" in single
    assert "bootkit_tries" not in grubscript.render_slot(7, entries, 3)


# --- marking good --------------------------------------------------------------------


def booted_env(m: Machine, ref: str) -> dict[str, str]:
    """For the shell script: a kernel command line that boots `ref`."""
    cmdline = m.root / "cmdline"
    cmdline.write_text(f"root=LABEL=x rw bootkit={m.sr.load(ref).path} quiet\n")
    return {"BOOTKIT_PROC_CMDLINE": str(cmdline)}


def booted_as(m: Machine, ref: str) -> contextlib.AbstractContextManager[None]:
    return booted(m.sr.load(ref).path)


def test_mark_good_command_systemd_boot(sdboot: Machine, monkeypatch) -> None:
    a = sdboot.deploy()
    sdboot.systemd_boot_tries(a)
    assert "not booted into a deployment" in fails("mark-good", "--sysroot", sdboot.root)
    with booted_as(sdboot, a):
        out = ok("mark-good", "--sysroot", sdboot.root).stdout
        assert out.startswith(f"Marked {a} good: renamed ")
        assert sdboot.status()[a]["boot"] == "good"
        assert "already marked good" in ok("mark-good", "--sysroot", sdboot.root).stdout
    b = sdboot.deploy()
    ok("mark-good", "--sysroot", sdboot.root, b)
    assert sdboot.status()[b]["boot"] == "good"


def test_mark_good_command_grub(grub: Machine) -> None:
    a = grub.deploy()
    b = grub.deploy()
    grub_boot(grub)
    # a booted (picked from the menu): its own record is cleared, b's counter stays.
    with booted_as(grub, a):
        out = ok("mark-good", "--sysroot", grub.root).stdout
    assert "renamed" in out and "GRUB" not in out
    assert grub.grubenv()[grubscript.TRIES_VAR] == "1"
    with booted_as(grub, b):
        out = ok("mark-good", "--sysroot", grub.root).stdout
    assert "cleared the GRUB boot counter (1 tries were left)" in out
    assert grub.grubenv() == {grubscript.COUNTED_VAR: grub.sr.load(b).path}
    assert (grub.boot / grubscript.GRUBENV.lstrip("/")).stat().st_size == 1024
    status = grub.status()
    assert status[a]["boot"] == status[b]["boot"] == "good"


def shells() -> Iterator[list[str]]:
    yield ["/bin/sh"]
    if shutil.which("busybox"):
        yield ["busybox", "sh"]


@pytest.fixture(params=list(shells()), ids=lambda s: " ".join(s))
def shell(request: pytest.FixtureRequest) -> list[str]:
    return request.param


def efivar(efivars: Path, name: str, value: str) -> None:
    efivars.mkdir(exist_ok=True)
    data = (0x6).to_bytes(4, "little") + (value + "\0").encode("utf-16-le")
    (efivars / f"{name}-{VENDOR}").write_bytes(data)


def run_script(shell: list[str], m: Machine, ref: str | None, *args: str,
               mounts: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOOTKIT_EFIVARS": str(m.root / "efivars")}
    (m.root / "efivars").mkdir(exist_ok=True)
    env.update(booted_env(m, ref) if ref else {"BOOTKIT_PROC_CMDLINE": str(m.root / "none")})
    (m.root / "mounts").write_text(mounts or "/dev/vda2 / ext4 rw 0 0\n")
    env["BOOTKIT_PROC_MOUNTS"] = str(m.root / "mounts")
    return subprocess.run([*shell, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, check=False, timeout=30)


def test_script_renames_the_entry_systemd_boot_counted(sdboot: Machine, shell: list[str]) -> None:
    a = sdboot.deploy()
    b = sdboot.deploy()
    counted = sdboot.systemd_boot_tries(b)
    efivar(sdboot.root / "efivars", "LoaderBootCountPath",
           f"\\loader\\entries\\{counted}")
    # Found through /proc/mounts, without an argument; no bootkit= on the command line.
    mounts = f"/dev/vda2 / ext4 rw 0 0\n/dev/vda1 {sdboot.boot} vfat rw 0 0\n"
    proc = run_script(shell, sdboot, None, mounts=mounts)
    assert proc.returncode == 0, proc.stderr
    assert f"marked {counted} good" in proc.stdout
    status = sdboot.status()
    assert status[b]["boot"] == "good" and status[a]["boot"] == "indeterminate"
    again = run_script(shell, sdboot, None, mounts=mounts)
    assert again.returncode == 0 and "already marked good" in again.stdout


def test_script_clears_the_grub_counter_in_place(grub: Machine, shell: list[str]) -> None:
    a = grub.deploy()
    b = grub.deploy()
    path = grub.boot / grubscript.GRUBENV.lstrip("/")
    grubenv.write(path, {**grub.grubenv(), "saved_entry": "x y", "next_entry": ""})
    grub_boot(grub)
    inode = path.stat().st_ino
    # The fallback boot of a does not touch b's counter.
    proc = run_script(shell, grub, a, str(grub.boot))
    assert proc.returncode == 0, proc.stderr
    assert grub.grubenv()[grubscript.TRIES_VAR] == "1"
    proc = run_script(shell, grub, b, str(grub.boot))
    assert proc.returncode == 0, proc.stderr
    assert "cleared the GRUB boot counter" in proc.stdout
    assert path.stat().st_size == 1024 and path.stat().st_ino == inode
    assert grub.grubenv() == {
        grubscript.COUNTED_VAR: grub.sr.load(b).path, "saved_entry": "x y", "next_entry": "",
    }
    status = grub.status()
    assert status[b]["boot"] == "good" and status[a]["boot"] == "good"


def test_script_refuses_a_broken_grubenv(grub: Machine, shell: list[str]) -> None:
    a = grub.deploy()
    path = grub.boot / grubscript.GRUBENV.lstrip("/")
    path.write_bytes(path.read_bytes()[:1000])
    proc = run_script(shell, grub, a, str(grub.boot))
    assert proc.returncode == 1
    assert "not a 1024-byte GRUB environment block" in proc.stderr
    assert path.stat().st_size == 1000


def test_script_with_nothing_to_do(sdboot: Machine, shell: list[str]) -> None:
    proc = run_script(shell, sdboot, None)
    assert proc.returncode == 0 and "no boot counter to clear" in proc.stdout


def test_script_is_clean_posix_sh() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_unit_orders_after_boot_complete() -> None:
    unit = (REPO / "bootkit/data/bootkit-mark-good.service").read_text()
    assert "Requires=boot-complete.target" in unit
    assert "After=local-fs.target boot-complete.target" in unit
    assert "ExecStart=/usr/bin/bootkit mark-good" in unit
