"""Boot entries: their format, their names, and the proof that every menu shows one order."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from support.bootreaders import blscfg_script, grub_cmdline, grub_command, kernel_params
from support.helpers import (
    bls_entries,
    deploy_tree,
    deployment_path,
    grub_menu,
    init_sysroot,
    make_tree,
    ref_of_path,
    refs_of_entries,
    sdboot_menu,
    status_refs,
    untidy,
)

from bootkit.errors import BootkitError
from bootkit.formats.bls import (
    BAD,
    DEFAULT,
    MAX_RANK,
    MAX_SERIAL,
    OTHER,
    BootEntry,
    EntryName,
    blscfg_order,
    parse_entry,
    systemd_boot_order,
)
from bootkit.sysroot import operations
from bootkit.sysroot.layout import Sysroot


def test_entry_round_trip() -> None:
    entry = BootEntry(
        title="Fedora Linux 40 (Workstation Edition)",
        version="40.20240101.0",
        sort_key="bootkit-99999998-0000",
        linux="/bootkit/fedora/6.8.5-abc/linux",
        initrd=("/bootkit/fedora/6.8.5-abc/initrd", "/bootkit/fedora/ucode.img"),
        options="root=LABEL=bootkit-root rw bootkit=/bootkit/deploy/fedora/deploy/1-abc quiet",
        extra=(("architecture", "x64"),),
    )
    text = entry.render()
    assert text.splitlines()[0] == "title Fedora Linux 40 (Workstation Edition)"
    assert parse_entry(text) == entry


def test_parse_tolerates_comments_blank_lines_and_split_options() -> None:
    text = "# made by hand\n\ntitle  T \nlinux /k\noptions a=1\noptions b=2\nmachine-id abc\n"
    entry = parse_entry(text)
    assert (entry.title, entry.linux, entry.options) == ("T", "/k", "a=1 b=2")
    assert entry.extra == (("machine-id", "abc"),)
    assert entry.initrd == ()


# What GRUB's blscfg and systemd-boot must both read as one line per key, the same.
AWKWARD = BootEntry(
    title="It's $HOME {x}; } #1 \u00e9",
    version="12 (bookworm) #2",
    sort_key="bootkit-99999998-0000",
    linux="/bootkit/os/6.6.0+-0123456789ab/linux",
    initrd=("/bootkit/os/6.6.0+-0123456789ab/initrd",),
    options='root=LABEL=r rw bootkit=/bootkit/deploy/os/deploy/1-a dyndbg="module=x" a=b#c !x',
)


def test_awkward_values_round_trip_and_read_alike_in_blscfg() -> None:
    assert parse_entry(AWKWARD.render()) == AWKWARD
    pasted = grub_command(blscfg_script(AWKWARD).splitlines()[0])
    assert pasted[1] == f"(hd0,gpt1){AWKWARD.linux}"
    assert kernel_params(grub_cmdline(pasted[2:])) == kernel_params(AWKWARD.options)


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="needs grub-common")
def test_grub_parses_what_blscfg_makes_of_an_entry(tmp_path: Path) -> None:
    script = tmp_path / "entry.cfg"
    script.write_text("menuentry t {\n" + blscfg_script(AWKWARD) + "}\n")
    proc = subprocess.run(["grub-script-check", str(script)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": "T\noptions init=/bin/sh"}, "boot entry title"),
        ({"title": "T\r"}, "boot entry title"),
        ({"version": "1\u2028linux /x"}, "boot entry version"),
        ({"version": ""}, "boot entry version"),
        ({"sort_key": "a b"}, "boot entry sort-key"),
        ({"linux": "/bootkit/os/6.1;reboot;-1/linux"}, "boot entry file"),
        ({"linux": "/bootkit/os/6.1\nx/linux"}, "boot entry file"),
        ({"initrd": ("/a/../initrd",)}, "boot entry file"),
        ({"linux": "", "efi": ""}, "boot entry file"),
        ({"efi": "/bootkit/os/x/uki.efi"}, "not both"),
        ({"options": "root=x rw a;reboot"}, "boot entry options"),
        ({"options": "root=x rw $prefix"}, "boot entry options"),
        ({"options": "root=x\nefi /evil.efi"}, "boot entry options"),
        ({"extra": (("machine-id", "a\nlinux /x"),)}, "boot entry machine-id"),
        ({"extra": (("linux", "/x"),)}, "invalid boot entry key"),
        ({"extra": (("Bad Key", "x"),)}, "invalid boot entry key"),
    ],
)
def test_a_value_that_would_split_or_inject_a_line_is_refused(
    change: dict[str, object], message: str
) -> None:
    entry = replace(AWKWARD, **change)  # type: ignore[arg-type]
    with pytest.raises(BootkitError, match=re.escape(message)):
        entry.render()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title x\ninitrd /i\n", "no 'linux' line"),
        ("linux /k\n\x00\x01garbage\n", "not a boot entry line"),
        ("Linux /k\n", "not a boot entry line"),
    ],
)
def test_parse_refuses_garbage_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(BootkitError, match=message) as err:
        parse_entry(text, "/efi/loader/entries/x.conf")
    assert "/efi/loader/entries/x.conf" in err.value.message


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        (EntryName(7, 0, "fedora-3-abcdef01"), ""),
        (EntryName(7, 2, "fedora-3-abcdef01", tries_left=3), "+3"),
        (EntryName(12345678, MAX_SERIAL, "os-1-x", DEFAULT, 2, 1), "+2-1"),
        (EntryName(1, 5, "a.b-c_d-9-0", BAD, tries_left=0, tries_done=3), "+0-3"),
        # The names of bootkit before, which a switch replaces.
        (EntryName(12345678, 0, "os-1-x", OTHER, 2, 1, legacy_rank=MAX_RANK), "+2-1"),
        (EntryName(3, 0, "os-1-x", DEFAULT, legacy_rank=0), ""),
    ],
)
def test_entry_name_round_trip(name: EntryName, suffix: str) -> None:
    filename = name.filename
    assert filename.startswith("bootkit-") and filename.endswith(f"{suffix}.conf")
    assert EntryName.parse(filename) == name


def test_entry_name_fields() -> None:
    name = EntryName.parse("bootkit-300000012-00000042-fedora-12-deadbeef+2-1.conf")
    assert name == EntryName(42, 12, "fedora-12-deadbeef", DEFAULT, 2, 1)
    assert name.sort_key == "bootkit-0-99999987-99999957"
    legacy = EntryName.parse("bootkit-00000042-9997-fedora-12-deadbeef+2-1.conf")
    assert legacy == EntryName(42, 0, "fedora-12-deadbeef", OTHER, 2, 1, legacy_rank=2)
    assert legacy.sort_key == "bootkit-99999957-0002"


def test_names_sort_by_class_then_serial_then_generation_in_both_bootloaders() -> None:
    """Newest first within a class, and every new name before every old-format one."""
    names = [
        EntryName(9, 7, "os-7-a", DEFAULT),
        EntryName(3, 7, "os-7-a", DEFAULT),  # an older text of the same entry
        EntryName(2, 4, "os-4-b", DEFAULT),  # an old default not yet removed
        EntryName(1, 12, "os-12-c", OTHER, 2, 1),
        EntryName(8, 9, "os-9-d", OTHER),
        EntryName(5, 1, "os-1-e", OTHER),
        EntryName(9, 30, "os-30-f", BAD, 3),  # not yet spent: systemd-boot keeps it here
        # Old-format names (of generations below 70 million, in systemd-boot's order).
        EntryName(69_999_999, 0, "os-2-g", DEFAULT, legacy_rank=0),
        EntryName(69_999_999, 0, "os-1-h", OTHER, legacy_rank=1),
    ]
    files = [n.filename for n in names]
    assert blscfg_order(files[::-1]) == files
    entries = [(n.filename, _entry(n.sort_key)) for n in names]
    assert [f for f, _ in systemd_boot_order(entries[::-1])] == files
    assert sorted(names, key=lambda n: n.precedence, reverse=True) == names


@pytest.mark.parametrize(
    "filename",
    [
        "fedora-6.8.conf",
        "bootkit-1-9999-x.conf",
        "bootkit-00000001-9999-x.conf.bootkit-tmp",
        ".bootkit-00000001-9999-x.conf.bootkit-tmp",
        "bootkit-00000001-9999-x",
    ],
)
def test_foreign_names_are_not_bootkit_entries(filename: str) -> None:
    assert EntryName.parse(filename) is None


def _entry(sort_key: str = "", version: str = "1") -> BootEntry:
    return BootEntry("t", version, sort_key, "/k", (), "")


def test_systemd_boot_rules() -> None:
    entries = [
        ("zz-plain.conf", _entry()),
        ("aa-plain.conf", _entry()),
        ("bootkit-00000001-9999-os-1-a+0-3.conf", _entry("a")),  # no tries left: last
        ("keyed-old.conf", _entry("b", "1.9")),
        ("keyed-new.conf", _entry("b", "1.10")),
        ("first.conf", _entry("a", "0")),
    ]
    order = [f for f, _ in systemd_boot_order(entries)]
    assert order == [
        "first.conf",
        "keyed-new.conf",
        "keyed-old.conf",
        "zz-plain.conf",
        "aa-plain.conf",
        "bootkit-00000001-9999-os-1-a+0-3.conf",
    ]


def test_blscfg_ignores_the_counting_suffix() -> None:
    names = [
        "bootkit-00000002-9998-os-1-a.conf",
        "bootkit-00000002-9999-os-2-b+3.conf",
        "bootkit-00000001-9999-os-1-a.conf",
    ]
    assert blscfg_order(names) == [names[1], names[0], names[2]]


# --- one order everywhere ---------------------------------------------------------------

# Versions chosen so that neither deploy order nor version order is the menu order.
VERSIONS = ["1", "1.10", "1.9", "2~rc1", "2", "0.9", "10", "3^p1", "3", "2.1", "1.2-3", "7"]


def _menus(sr: Sysroot) -> dict[str, list[str]]:
    boot = sr.boot_path
    on_disk = bls_entries(boot)
    by_name = dict(on_disk)
    return {
        "status": status_refs(sr),
        "systemd-boot": refs_of_entries(sdboot_menu(boot)),
        "blscfg": [
            ref_of_path(deployment_path(by_name[f].options))
            for f in blscfg_order([f for f, _ in on_disk])
        ],
        "grub.cfg": [i.removeprefix("bootkit-").replace("-", "/", 1) for i, _ in grub_menu(boot)],
    }


def _assert_one_order(sr: Sysroot) -> list[str]:
    menus = _menus(sr)
    expected = menus["status"]
    for menu, order in menus.items():
        assert order == expected, f"{menu} order {order} != status order {expected}"
    state = sr.state()
    assert expected[0] == state.default
    # The rest newest first.
    serials = [sr.load(ref).serial for ref in expected[1:]]
    assert serials == sorted(serials, reverse=True)
    assert not untidy(sr)
    return expected


@pytest.fixture
def sysroot(tmp_path: Path) -> Sysroot:
    (tmp_path / "sys").mkdir()
    return init_sysroot(tmp_path / "sys", "grub", "test")


def _deploy(sr: Sysroot, tmp_path: Path, i: int) -> None:
    tree = make_tree(tmp_path / f"tree{i}", version=VERSIONS[i], kernel=f"kernel {i % 3}".encode())
    deploy_tree(sr, tree)


@pytest.mark.parametrize("count", [1, 2, 5, 12])
def test_menu_order_is_the_same_everywhere(sysroot: Sysroot, tmp_path: Path, count: int) -> None:
    for i in range(count):
        _deploy(sysroot, tmp_path, i)
    order = _assert_one_order(sysroot)
    assert len(order) == count
    if count == 1:
        return
    # A default that is neither the newest nor the oldest.
    middle = sysroot.load(order[count // 2])
    operations.set_default(sysroot, str(middle.serial))
    before = _assert_one_order(sysroot)
    assert before[0] == middle.ref
    operations.rollback(sysroot)
    assert _assert_one_order(sysroot)[0] == before[1]
    operations.set_default(sysroot, order[-1])
    assert _assert_one_order(sysroot)[0] == order[-1]


# Entries of other systems that exercise every rule of systemd-boot's sort.
FOREIGN = {
    "a9.conf": "title A9\nsort-key a9\nversion 1\nlinux /x\n",
    "a10.conf": "title A10\nsort-key a10\nversion 1\nlinux /x\n",
    "same-key-old.conf": "title old\nsort-key same\nversion 1.9\nlinux /x\n",
    "same-key-new.conf": "title new\nsort-key same\nversion 1.10\nlinux /x\n",
    "same-key-mid.conf": "title mid\nsort-key same\nversion 1.10\nmachine-id 0a\nlinux /x\n",
    "plain-2.conf": "title plain 2\nlinux /x\n",
    "plain-10.conf": "title plain 10\nlinux /x\n",
    "counted+3-1.conf": "title counted\nversion 5\nlinux /x\n",
    "counted+1-3.conf": "title counted too\nversion 5\nlinux /x\n",
    "spent+0-3.conf": "title spent\nsort-key 0\nlinux /x\n",
}


def test_bootctl_lists_the_same_order(sysroot: Sysroot, tmp_path: Path) -> None:
    """systemd's own implementation of the sort (bootctl list), where it can be run."""
    bootctl = shutil.which("bootctl")
    if bootctl is None:
        pytest.skip("bootctl (Debian package systemd-boot) is not installed")
    for i in range(5):
        _deploy(sysroot, tmp_path, i)
    operations.set_default(sysroot, "2")
    boot = sysroot.boot_path
    for name, text in FOREIGN.items():
        (boot / "loader/entries" / name).write_text(text)
    # bootctl reads only a directory that is a mount point.
    cmd = (
        'mount --bind "$1" "$1" && SYSTEMD_RELAX_ESP_CHECKS=1 '
        '"$2" --esp-path="$1" --boot-path="$1" list --no-pager --json=short'
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd, "sh", str(boot), bootctl],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    listed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [Path(e["path"]).name for e in listed] == [f for f, _ in sdboot_menu(boot)]
    bootkit_listed = [e for e in listed if e["id"].startswith("bootkit-")]
    assert [ref_of_path(deployment_path(e["options"])) for e in bootkit_listed] == status_refs(
        sysroot
    )


class _Crash(BaseException):
    pass


def _first_refs(boot: Path) -> set[str]:
    """What systemd-boot and GRUB's blscfg would boot first."""
    entries = bls_entries(boot)
    by_name = dict(entries)
    firsts = {sdboot_menu(boot)[0][0], blscfg_order([f for f, _ in entries])[0]}
    return {ref_of_path(deployment_path(by_name[f].options)) for f in firsts}


@pytest.mark.parametrize("how", ["deploy", "set-default to the oldest"])
def test_an_interrupted_switch_boots_the_old_or_the_new_default(
    sysroot: Sysroot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Cut at each rename and unlink in loader/entries: both bootloaders boot the old
    default until the new one is durable, the new one after, with every deployment of
    that menu listed."""
    for i in range(4):
        _deploy(sysroot, tmp_path, i)
    old = _assert_one_order(sysroot)
    tree = make_tree(tmp_path / "tree5", version=VERSIONS[5], kernel=b"kernel 5")
    real_rename, real_unlink = os.rename, os.unlink
    steps = 0
    while True:
        work = tmp_path / f"cut{steps}"
        subprocess.run(["cp", "-a", sysroot.path, work], check=True)  # hard links kept
        sr = Sysroot(work)
        done: list[str] = []

        def count(what: str, done: list[str] = done, steps: int = steps) -> None:
            if len(done) == steps:
                raise _Crash
            done.append(what)

        def rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
            if "loader/entries" in str(dst):
                count(f"rename {dst}")
            real_rename(src, dst)

        def unlink(path: os.PathLike[str] | str, *a: object, **kw: object) -> None:
            if "loader/entries" in str(path) and not str(path).endswith(".bootkit-tmp"):
                count(f"unlink {path}")
            real_unlink(path, *a, **kw)  # type: ignore[arg-type]

        with monkeypatch.context() as m:
            m.setattr(os, "rename", rename)
            m.setattr(os, "unlink", unlink)
            try:
                if how == "deploy":
                    deploy_tree(sr, tree)
                else:
                    operations.set_default(sr, old[-1])
                finished = True
            except _Crash:
                finished = False
        firsts = _first_refs(sr.boot_path)
        assert len(firsts) == 1, (done, firsts)
        (first,) = firsts
        listed = set(refs_of_entries(bls_entries(sr.boot_path)))
        if first == old[0]:
            assert set(old) <= listed, done
        else:
            # The state names the new menu before the switch begins.
            assert first == sr.state().default, done
            assert set(sr.state().deployments) <= listed, done
        operations.bootloader_update(sr)
        _assert_one_order(sr)
        if finished:
            break
        steps += 1
    assert steps >= 2
