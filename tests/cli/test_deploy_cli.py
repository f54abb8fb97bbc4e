"""The deployment commands, driven the way a user drives them: through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import click
import pytest
from support.helpers import (
    bls_entries,
    booted,
    cli,
    fails,
    grub_menu,
    init_sysroot,
    make_tree,
    ok,
    python_cli,
    sdboot_menu,
    snapshot,
    untidy,
)

from bootkit.cli import main
from bootkit.sysroot.layout import Sysroot


@pytest.fixture(params=["systemd-boot", "grub"])
def bootloader(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sysroot(tmp_path: Path, bootloader: str) -> Path:
    path = tmp_path / "sys"
    path.mkdir()
    ok("init", "--sysroot", path, "--os", "test", "--bootloader", bootloader)
    return path


def _status(sysroot: Path) -> list[dict]:
    return json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]


def _deploy(
    sysroot: Path, tmp_path: Path, n: int, *extra: str, kernel: bytes | None = None
) -> dict:
    tree = make_tree(
        tmp_path / f"tree{n}", version=f"{n}.0", kernel=kernel or f"kernel {n}\n".encode()
    )
    out = ok("deploy", "--sysroot", sysroot, tree, "--json", *extra).stdout
    return json.loads(out)


def _sr(sysroot: Path) -> Sysroot:
    return Sysroot(sysroot)


def test_smoke_in_a_fresh_interpreter(tmp_path: Path) -> None:
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    tree = make_tree(tmp_path / "tree")
    env = dict(os.environ)

    def run(*args: str | Path) -> str:
        proc = subprocess.run(
            [*python_cli(), *map(str, args)], capture_output=True, text=True, env=env, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    init_sysroot(sysroot, "systemd-boot", "smoke")
    assert "Deployed smoke/1-" in run("deploy", "--sysroot", sysroot, tree)
    assert "smoke/1-" in run("status", "--sysroot", sysroot)
    assert (sysroot / "efi/loader/loader.conf").read_text().startswith("timeout 3\n")


def test_deploy_writes_what_the_contract_says(
    sysroot: Path, tmp_path: Path, bootloader: str
) -> None:
    dep = _deploy(sysroot, tmp_path, 1, "--karg", "quiet", "--karg", "console=ttyS0")
    assert dep["default"] and dep["id"].startswith("1-") and dep["os"] == "test"
    assert dep["path"] == f"/bootkit/deploy/test/deploy/{dep['id']}"
    assert dep["title"] == "Test OS 1.0" and dep["version"] == "1.0"
    tree = sysroot / "bootkit/deploy/test/deploy" / dep["id"]
    meta = json.loads((tree.parent / f"{dep['id']}.json").read_text())
    assert meta["kernel_version"] == dep["kernel_version"]
    assert (tree / "usr/bin/hello").is_file()
    assert (tree / "etc/hostname").read_text() == "testhost\n"
    # /var went to the shared /var; the deployment's own is an empty mount point.
    assert (sysroot / "bootkit/deploy/test/var/lib/app/state").read_text() == "seed\n"
    assert list((tree / "var").iterdir()) == []
    boot = sysroot / "efi"
    ((name, entry),) = bls_entries(boot)
    assert name == dep["entry"]
    assert entry.options == (
        f"root=LABEL=bootkit-root rw bootkit={dep['path']} quiet console=ttyS0"
    )
    assert (boot / entry.linux.lstrip("/")).read_bytes() == b"kernel 1\n"
    assert (boot / entry.initrd[0].lstrip("/")).read_bytes() == b"initramfs image\n"
    assert entry.linux.startswith(f"/bootkit/test/{dep['kernel_version']}-")
    if bootloader == "grub":
        stub = (boot / "grub/grub.cfg").read_text()
        assert "source /bootkit/grub/slot-$bootkit_slot.cfg" in stub
        ((gid, linux),) = grub_menu(boot)
        assert gid == f"bootkit-test-{dep['id']}"
        assert linux == f"{entry.linux} {entry.options}"
    else:
        assert (boot / "loader/loader.conf").read_text() == "timeout 3\ndefault bootkit-*\n"
    assert not untidy(_sr(sysroot))


def test_status_order_rollback_and_set_default(sysroot: Path, tmp_path: Path) -> None:
    deps = [_deploy(sysroot, tmp_path, n) for n in (1, 2, 3)]
    ids = [d["id"] for d in deps]
    assert [d["id"] for d in _status(sysroot)] == ids[::-1]
    text = ok("status", "--sysroot", sysroot).stdout
    assert text.index(ids[2]) < text.index(ids[1]) < text.index(ids[0])
    assert "*   test/" + ids[2] in text

    assert f"Default is now test/{ids[1]}" in ok("rollback", "--sysroot", sysroot).stdout
    assert [d["id"] for d in _status(sysroot)] == [ids[1], ids[2], ids[0]]
    # Rolling back again goes to the newest: the second entry in the menu.
    ok("rollback", "--sysroot", sysroot)
    assert _status(sysroot)[0]["id"] == ids[2]

    for ident, want in ((ids[0], ids[0]), (f"test/{ids[1]}", ids[1]), ("3", ids[2])):
        ok("set-default", "--sysroot", sysroot, ident)
        rows = _status(sysroot)
        assert rows[0]["id"] == want and rows[0]["default"]
        assert sum(r["default"] for r in rows) == 1
        first = sdboot_menu(sysroot / "efi")[0][0]
        assert first == rows[0]["entry"]
    assert not untidy(_sr(sysroot))


def test_deploy_no_default_and_version(sysroot: Path, tmp_path: Path) -> None:
    first = _deploy(sysroot, tmp_path, 1)
    second = _deploy(sysroot, tmp_path, 2, "--no-default", "--version", "2.0-beta")
    rows = _status(sysroot)
    assert [r["id"] for r in rows] == [first["id"], second["id"]]
    assert rows[1]["version"] == "2.0-beta" and not rows[1]["default"]


def test_kernel_arguments_carry_over_until_given_again(sysroot: Path, tmp_path: Path) -> None:
    first = _deploy(sysroot, tmp_path, 1, "--karg", "console=ttyS0", "--karg", "quiet")
    second = _deploy(sysroot, tmp_path, 2)
    third = _deploy(sysroot, tmp_path, 3, "--karg", "loglevel=7")
    assert first["kargs"] == second["kargs"] == ["console=ttyS0", "quiet"]
    assert third["kargs"] == ["loglevel=7"]
    (row,) = [r for r in _status(sysroot) if r["id"] == second["id"]]
    entry = (Path(sysroot) / "efi/loader/entries" / row["entry"]).read_text()
    assert "console=ttyS0 quiet" in entry


def test_pin_unpin_undeploy_and_booted(sysroot: Path, tmp_path: Path) -> None:
    a, b, c = (_deploy(sysroot, tmp_path, n) for n in (1, 2, 3))
    assert "Pinned test/" in ok("pin", "--sysroot", sysroot, a["id"]).stdout
    assert [r["pinned"] for r in _status(sysroot)] == [False, False, True]
    (row,) = [
        r for r in ok("status", "--sysroot", sysroot).stdout.splitlines() if f"test/{a['id']}" in r
    ]
    assert row.split()[0] == "p"
    ok("unpin", "--sysroot", sysroot, a["id"])
    assert not any(r["pinned"] for r in _status(sysroot))

    with booted(b["path"]):
        rows = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"]
        assert [r["booted"] for r in rows] == [False, True, False]
        before = snapshot(sysroot)
        assert "is the booted deployment" in fails("undeploy", "--sysroot", sysroot, b["id"])
        assert snapshot(sysroot) == before

        # Removing the default: the newest remaining one takes over.
        assert f"Removed test/{c['id']}" in ok("undeploy", "--sysroot", sysroot, c["id"]).stdout
    rows = _status(sysroot)
    assert [r["id"] for r in rows] == [b["id"], a["id"]] and rows[0]["default"]
    assert not (sysroot / "bootkit/deploy/test/deploy" / c["id"]).exists()
    assert not untidy(_sr(sysroot))
    ok("undeploy", "--sysroot", sysroot, a["id"])
    assert "last deployment" in fails("undeploy", "--sysroot", sysroot, b["id"])
    assert len(bls_entries(sysroot / "efi")) == 1


def test_cleanup_keeps_default_booted_pinned_and_newest(sysroot: Path, tmp_path: Path) -> None:
    # Deployments 1 and 2 share a kernel; every other one has its own.
    deps = [
        _deploy(sysroot, tmp_path, n, kernel=b"shared kernel\n" if n <= 2 else None)
        for n in range(1, 8)
    ]
    ids = [d["id"] for d in deps]
    ok("set-default", "--sysroot", sysroot, ids[1])  # 2: default
    ok("pin", "--sysroot", sysroot, ids[3])  # 4: pinned
    fifth = deps[4]["path"]  # 5: booted
    boot = sysroot / "efi"
    payload_dirs = {p.name for p in (boot / "bootkit/test").iterdir()}
    assert len(payload_dirs) == 6

    with booted(fifth):
        out = json.loads(ok("cleanup", "--sysroot", sysroot, "--keep", "1", "--json").stdout)
    # 7 is the newest; 1, 3 and 6 go.
    assert sorted(out["removed"]) == sorted(f"test/{ids[i]}" for i in (0, 2, 5))
    assert [d["id"] for d in _status(sysroot)] == [ids[1], ids[6], ids[4], ids[3]]
    # Deployment 1's kernel is still used by 2; those of 3 and 6 are gone.
    assert len(out["payloads"]) == 2
    remaining = {p.name for p in (boot / "bootkit/test").iterdir()}
    assert remaining == payload_dirs - {p.split("/", 1)[1] for p in out["payloads"]}
    assert len(remaining) == 4
    for i in (0, 2, 5):
        assert not (sysroot / "bootkit/deploy/test/deploy" / ids[i]).exists()
    assert not untidy(_sr(sysroot))

    # Nothing more to do; the text output says so.
    with booted(fifth):
        text = ok("cleanup", "--sysroot", sysroot, "--keep", "1").stdout
    assert text.startswith("Removed 0 deployment(s); 0 boot payload(s)")


def test_bootloader_update_regenerates(sysroot: Path, tmp_path: Path, bootloader: str) -> None:
    deps = [_deploy(sysroot, tmp_path, n) for n in (1, 2)]
    boot = sysroot / "efi"
    before = _sr(sysroot).state().generation
    for f in (boot / "loader/entries").iterdir():
        f.unlink()
    if bootloader == "grub":
        for f in (boot / "bootkit/grub").glob("slot-*"):
            f.unlink()
    else:
        (boot / "loader/loader.conf").unlink()
    out = ok("bootloader", "update", "--sysroot", sysroot).stdout
    assert out.startswith(f"Bootloader updated; generation {before + 1}; 2 entries")
    assert [r["entry"] for r in _status(sysroot)] == [f for f, _ in sdboot_menu(boot)]
    assert [d["id"] for d in deps[::-1]] == [d["id"] for d in _status(sysroot)]
    assert not untidy(_sr(sysroot))


def test_garbage_entry_is_reported_then_replaced(sysroot: Path, tmp_path: Path) -> None:
    dep = _deploy(sysroot, tmp_path, 1)
    boot = sysroot / "efi"
    edir = boot / "loader/entries"
    # A bootkit-named entry someone broke, and an entry bootkit does not own.
    bad = edir / dep["entry"]
    bad.write_bytes(b"\x00\xffthis is not\na boot entry\n")
    foreign = edir / "other-os.conf"
    foreign.write_text("title Other\nlinux /vmlinuz-other\n")

    result = cli("status", "--sysroot", sysroot)
    assert result.exit_code == 0
    assert f"unreadable boot entry {dep['entry']}" in result.stderr
    assert f"test/{dep['id']}" in result.stdout
    bad_json = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["bad_entries"]
    assert [b["file"] for b in bad_json] == [dep["entry"]]

    # The next command regenerates every bootkit entry and leaves foreign ones alone.
    ok("bootloader", "update", "--sysroot", sysroot)
    assert not bad.exists()
    assert foreign.read_text() == "title Other\nlinux /vmlinuz-other\n"
    names = [f for f, _ in bls_entries(boot)]
    assert names == sorted([_status(sysroot)[0]["entry"], "other-os.conf"])
    assert not cli("status", "--sysroot", sysroot).stderr


def test_any_change_repairs_a_garbage_entry(sysroot: Path, tmp_path: Path) -> None:
    dep = _deploy(sysroot, tmp_path, 1)
    (sysroot / "efi/loader/entries" / dep["entry"]).write_text("garbage\n")
    _deploy(sysroot, tmp_path, 2)
    assert not untidy(_sr(sysroot))


# --- bad input: one line, non-zero, nothing half-written ---------------------------------


@pytest.fixture(scope="module")
def populated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("populated")
    sysroot = base / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "grub")
    _deploy(sysroot, base, 1)
    _deploy(sysroot, base, 2)
    return sysroot


@pytest.fixture
def populated(populated_template: Path, tmp_path: Path) -> Path:
    """A sysroot with two deployments (GRUB, so that every kind of boot file exists)."""
    copy = tmp_path / "populated"
    subprocess.run(["cp", "-a", str(populated_template), str(copy)], check=True)
    return copy


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set-default", "nope"], "no deployment 'nope'"),
        (["set-default", "99"], "no deployment '99'"),
        (["undeploy", "other/1-x"], "no deployment"),
        (["pin", "../../etc"], "no deployment"),
        (["deploy", "{tree}", "--os", "../escape"], "os"),
        (["deploy", "{tree}", "--os", "has space"], "os"),
        (["deploy", "{tree}", "--os", ".hidden"], "os"),
        (["deploy", "{tree}", "--karg", "bootkit=/x"], "invalid kernel argument"),
        (["deploy", "{tree}", "--karg", "a b"], "invalid kernel argument"),
        (["deploy", "{missing}"], "does not exist"),
        (["deploy", "{nokernel}"], "has no kernel"),
        (["deploy", "{corrupt}"], "not a readable tar archive"),
        (["deploy", "{tree}", "--initramfs", "tree", "--os", "test"], None),
    ],
)
def test_bad_input(populated: Path, tmp_path: Path, args: list[str], message: str | None) -> None:
    tree = make_tree(tmp_path / "input")
    nokernel = make_tree(tmp_path / "nokernel")
    for p in (nokernel / "usr/lib/modules").rglob("*"):
        if p.is_file():
            p.unlink()
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    paths = {
        "tree": tree,
        "missing": tmp_path / "missing",
        "nokernel": nokernel,
        "corrupt": corrupt,
    }
    argv = [a.format(**paths) for a in args]
    if message is None:
        # The control case: the same tree deploys when nothing is wrong with it.
        ok(argv[0], "--sysroot", populated, *argv[1:])
        return
    before = snapshot(populated)
    line = fails(argv[0], "--sysroot", populated, *argv[1:])
    assert message in line, line
    assert snapshot(populated) == before


def test_rollback_with_one_deployment(sysroot: Path, tmp_path: Path) -> None:
    _deploy(sysroot, tmp_path, 1)
    before = snapshot(sysroot)
    assert "no other deployment" in fails("rollback", "--sysroot", sysroot)
    assert snapshot(sysroot) == before


@pytest.mark.parametrize("broken", ["bootkit/state.json", "bootkit/config.json"])
@pytest.mark.parametrize("content", [b"{not json", b"\x00\xff", b"[]", b'{"generation": "x"}'])
@pytest.mark.parametrize("command", [["status"], ["rollback"], ["bootloader", "update"]])
def test_unreadable_state_or_config(
    populated: Path, broken: str, content: bytes, command: list[str]
) -> None:
    (populated / broken).write_bytes(content)
    before = snapshot(populated)
    line = fails(*command, "--sysroot", populated)
    assert broken.split("/")[1] in line or "missing" in line, line
    assert snapshot(populated) == before


def test_not_a_sysroot(tmp_path: Path) -> None:
    assert "not a bootkit sysroot" in fails("status", "--sysroot", tmp_path)
    assert "not a bootkit sysroot" in fails("deploy", "--sysroot", tmp_path, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_twice_and_bad_names(tmp_path: Path) -> None:
    ok("init", "--sysroot", tmp_path, "--os", "test", "--bootloader", "grub")
    before = snapshot(tmp_path)
    assert "already a bootkit sysroot" in fails(
        "init", "--sysroot", tmp_path, "--os", "test", "--bootloader", "grub"
    )
    assert snapshot(tmp_path) == before
    other = tmp_path / "other"
    other.mkdir()
    assert "os" in fails("init", "--sysroot", other, "--os", "a/b", "--bootloader", "grub")
    assert "root=" in fails(
        "init", "--sysroot", other, "--os", "x", "--bootloader", "grub", "--root-arg", "LABEL=x"
    )
    assert list(other.iterdir()) == []


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("command", _commands(main), ids=lambda c: " ".join(c) or "bootkit")
def test_help(command: tuple[str, ...]) -> None:
    result = ok(*command, "--help")
    assert result.stdout.startswith("Usage: ")
    # Every command says what it does in its own words.
    described = result.stdout.split("\n\n")[1].strip()
    assert described and not described.startswith("Options:")
