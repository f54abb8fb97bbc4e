"""What the admin changed in /etc: the comparison of trees and `bootkit etc diff`."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.etcspec import BASE, GONE, Dir, File, Link, Spec, build, edit
from support.helpers import deploy_tree, init_sysroot

from bootkit.errors import BootkitError
from bootkit.sysroot.etctree import EtcChange, etc_changes

# --- the diff ------------------------------------------------------------------------


def test_changes_are_sorted_and_say_what_changed(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    live = build(
        tmp_path / "etc",
        edit(
            BASE,
            {
                "issue": GONE,
                "ssh/sshd_config": File("PermitRootLogin yes\n", 0o600),
                "localtime": Link("/usr/share/zoneinfo/Europe/Paris"),
                "motd.d/local": "l\n",
                "ssh": Dir(0o700),
                "hosts": Link("/run/hosts"),
                "a.d": Dir(),
                "a.d/x": "x\n",
            },
        ),
    )
    assert etc_changes(defaults, live) == [
        EtcChange("a.d", "added", "dir"),
        EtcChange("a.d/x", "added", "file"),
        EtcChange("hosts", "modified", "symlink", ("type",)),
        EtcChange("issue", "deleted", "file"),
        EtcChange("localtime", "modified", "symlink", ("target",)),
        EtcChange("motd.d/local", "added", "file"),
        EtcChange("ssh", "modified", "dir", ("mode",)),
        EtcChange("ssh/sshd_config", "modified", "file", ("content", "mode")),
    ]


def test_untouched_copy_is_no_change(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    live = build(tmp_path / "etc", BASE)
    os.utime(live / "hosts", ns=(1, 1))
    assert etc_changes(defaults, live) == []


def test_missing_tree_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match="not a directory"):
        etc_changes(tmp_path / "nope", tmp_path)


def test_special_files_are_named_for_what_they_are(tmp_path: Path) -> None:
    defaults = build(tmp_path / "usr/etc", BASE)
    live = build(tmp_path / "etc", BASE)
    os.mkfifo(defaults / "same-pipe")
    os.mkfifo(live / "same-pipe")
    os.mkfifo(live / "initctl")
    changes = [EtcChange("initctl", "added", "fifo")]
    if os.geteuid() == 0:
        os.mknod(defaults / "console", stat.S_IFCHR | 0o600, os.makedev(5, 1))
        os.mknod(live / "console", stat.S_IFCHR | 0o600, os.makedev(4, 1))
        os.mknod(defaults / "disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
        os.mkfifo(live / "disk")
        changes = [
            EtcChange("console", "modified", "char", ("device",)),
            EtcChange("disk", "modified", "fifo", ("type",)),
            *changes,
        ]
    assert etc_changes(defaults, live) == changes
    assert changes[-1].to_json() == {
        "path": "initctl", "kind": "added", "type": "fifo", "changed": [],
    }


# --- bootkit etc diff ------------------------------------------------------------------


def make_sysroot(tmp_path: Path, count: int) -> tuple[Path, list[Path]]:
    """A sysroot with `count` real deployments of a tree whose defaults are BASE."""

    tree = tmp_path / "tree"
    build(tree / "usr/etc", BASE)
    kdir = tree / "usr/lib/modules/6.1.0-test"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"kernel")
    (kdir / "initramfs.img").write_bytes(b"initrd")
    (tmp_path / "root").mkdir()
    sr = init_sysroot(tmp_path / "root", "systemd-boot", "debian")
    deps = [deploy_tree(sr, tree) for _ in range(count)]
    return sr.path, [sr.deployment_dir(d.os, d.id) for d in deps]


def relive(deployment: Path, live: Spec) -> None:
    """Replace a deployment's live /etc with `live`, as an admin's edits would."""
    shutil.rmtree(deployment / "etc")
    build(deployment / "etc", live)


def run_diff(*args: str) -> tuple[int, str]:
    from bootkit.cli import main

    result = CliRunner().invoke(main, ["etc", "diff", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_cli_diff_text_and_json(tmp_path: Path) -> None:
    root, (first, second) = make_sysroot(tmp_path, 2)
    relive(first, edit(BASE, {"issue": GONE, "hosts": "mine\n", "motd.d/local": "l\n", "app": Dir()}))

    code, out = run_diff(f"debian/{first.name}", "--sysroot", str(root))
    assert code == 0
    assert out.splitlines() == ["A app/", "M hosts", "D issue", "A motd.d/local"]

    code, out = run_diff("1", "--json", "--sysroot", str(root))
    assert code == 0
    assert json.loads(out) == [
        {"path": "app", "kind": "added", "type": "dir", "changed": []},
        {"path": "hosts", "kind": "modified", "type": "file", "changed": ["content"]},
        {"path": "issue", "kind": "deleted", "type": "file", "changed": []},
        {"path": "motd.d/local", "kind": "added", "type": "file", "changed": []},
    ]

    assert run_diff(second.name, "--sysroot", str(root)) == (0, "")


def test_cli_diff_defaults_to_the_default_deployment(tmp_path: Path) -> None:
    root, (first, second) = make_sysroot(tmp_path, 2)
    relive(first, edit(BASE, {"hosts": "one\n"}))
    relive(second, edit(BASE, {"issue": GONE}))
    assert run_diff("--sysroot", str(root)) == (0, "D issue\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no deployment 'nope'"),
        (["debian/9"], "no deployment 'debian/9'"),
        (["../x"], "no deployment '../x'"),
    ],
)
def test_cli_diff_refuses_unknown_deployments(
    tmp_path: Path, args: list[str], message: str
) -> None:
    root, _ = make_sysroot(tmp_path, 1)
    code, out = run_diff(*args, "--sysroot", str(root))
    assert code == 1
    assert f"bootkit: {message}" in out


def test_cli_diff_without_deployments(tmp_path: Path) -> None:

    init_sysroot(tmp_path, "none", "debian")
    code, out = run_diff("--sysroot", str(tmp_path))
    assert code == 1
    assert "bootkit: no deployments yet" in out
