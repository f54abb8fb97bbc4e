"""bootkit-prepare-root in a private mount namespace, against a directory standing in for /sysroot.

The hook runs for real (real mount calls, util-linux and busybox flavours);
each test reads /proc/self/mountinfo inside the namespace before and after.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootkit.contract import is_valid_name

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "dracut/90bootkit/bootkit-prepare-root.sh"
GOOD = "/bootkit/deploy/test/deploy/a"


@functools.cache
def _namespace_command() -> tuple[str, ...] | None:
    """How to get a private mount namespace here: as root directly, else with a user namespace."""
    candidates = [("unshare", "--mount", "--propagation", "private"), ("unshare", "-r", "-m")]
    if os.geteuid() != 0:
        candidates.reverse()
    if shutil.which("unshare") is None:
        return None
    for candidate in candidates:
        if subprocess.run([*candidate, "true"], capture_output=True).returncode == 0:
            return candidate
    return None


pytestmark = pytest.mark.skipif(
    _namespace_command() is None, reason="cannot create a mount namespace (unshare)"
)


@pytest.fixture(params=["util-linux", "busybox"])
def flavour(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The shell and PATH the hook runs with: the host's, or busybox's applets only."""
    if request.param == "util-linux":
        return {"shell": "sh", "path": os.environ.get("PATH", "/usr/bin:/bin")}
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed")
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir()
    for applet in ("sh", "mount", "umount", "mkdir", "cat"):
        (bindir / applet).symlink_to(busybox)
    return {"shell": f"{busybox} sh", "path": str(bindir)}


@dataclass
class Mount:
    root: str
    mountpoint: str
    options: set[str]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    before: list[Mount]
    after: list[Mount]
    probes: dict[str, str]

    def at(self, path: Path) -> Mount:
        """The mount on top at `path` afterwards."""
        return [m for m in self.after if m.mountpoint == str(path)][-1]


def _mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), set(fields[5].split(","))))
    return mounts


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")


def run_hook(tmp_path: Path, sysroot: Path, cmdline: str, flavour: dict[str, str]) -> Run:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "cmdline").write_text(cmdline + "\n")
    script = f"""
        S='{sysroot}'
        mount --bind "$S" "$S"
        cat /proc/self/mountinfo > '{out}/before'
        PATH='{flavour["path"]}' BOOTKIT_SYSROOT="$S" BOOTKIT_CMDLINE='{out}/cmdline' \\
            {flavour["shell"]} '{HOOK}' > '{out}/stdout' 2> '{out}/stderr'
        echo $? > '{out}/rc'
        cat /proc/self/mountinfo > '{out}/after'
        for d in etc usr var sysroot; do
            if touch "$S/$d/probe-$d" 2>/dev/null; then echo "$d writable"; else echo "$d read-only"; fi
        done > '{out}/probes'
    """
    subprocess.run([*_namespace_command(), "sh", "-c", script], check=True)
    return Run(
        rc=int((out / "rc").read_text()),
        stdout=(out / "stdout").read_text(),
        stderr=(out / "stderr").read_text(),
        before=_mountinfo((out / "before").read_text()),
        after=_mountinfo((out / "after").read_text()),
        probes=dict(line.split() for line in (out / "probes").read_text().splitlines()),
    )


def make_sysroot(tmp_path: Path, deployment: str = "a") -> Path:
    sysroot = tmp_path / "sysroot"
    dep = sysroot / "bootkit/deploy/test/deploy" / deployment
    for sub in ("usr/bin", "etc", "var", "sysroot"):
        (dep / sub).mkdir(parents=True, exist_ok=True)
    (dep / "etc/hostname").write_text(f"{deployment}\n")
    (sysroot / "bootkit/deploy/test/var/lib").mkdir(parents=True, exist_ok=True)
    return sysroot


def test_deployment_becomes_the_root(tmp_path: Path, flavour: dict[str, str]) -> None:
    sysroot = make_sysroot(tmp_path)
    run = run_hook(tmp_path, sysroot, f"quiet root=LABEL=x rw bootkit={GOOD}", flavour)

    assert (run.rc, run.stderr) == (0, "")
    assert run.stdout == f"bootkit: switching root to {GOOD}\n"
    physical = [m for m in run.before if m.mountpoint == str(sysroot)][-1].root
    deployment = physical.rstrip("/") + GOOD

    top = run.at(sysroot)
    assert top.root == deployment
    usr = run.at(sysroot / "usr")
    assert (usr.root, "ro" in usr.options) == (deployment + "/usr", True)
    var = run.at(sysroot / "var")
    assert (var.root, "rw" in var.options) == (
        physical.rstrip("/") + "/bootkit/deploy/test/var",
        True,
    )
    physical_inside = run.at(sysroot / "sysroot")
    assert (physical_inside.root, "ro" in physical_inside.options) == (physical, True)
    assert not [m for m in run.after if m.mountpoint == str(sysroot / "etc")]
    assert len(run.after) == len(run.before) + 4

    assert run.probes == {
        "etc": "writable",
        "usr": "read-only",
        "var": "writable",
        "sysroot": "read-only",
    }
    # What was written landed in the deployment's etc and the stateroot's var.
    dep = sysroot / "bootkit/deploy/test/deploy/a"
    assert (dep / "etc/probe-etc").is_file()
    assert (sysroot / "bootkit/deploy/test/var/probe-var").is_file()
    assert not (dep / "var/probe-var").exists()


def test_missing_var_and_sysroot_mountpoints_are_created(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    dep = sysroot / "bootkit/deploy/test/deploy/a"
    (dep / "var").rmdir()
    (dep / "sysroot").rmdir()
    shutil.rmtree(sysroot / "bootkit/deploy/test/var")
    run = run_hook(
        tmp_path, sysroot, f"bootkit={GOOD}", {"shell": "sh", "path": os.environ["PATH"]}
    )
    assert run.rc == 0, run.stderr
    assert run.probes["var"] == "writable"
    assert (sysroot / "bootkit/deploy/test/var/probe-var").is_file()


def _symlinked_deployment(tmp_path: Path, sysroot: Path) -> None:
    outside = tmp_path / "outside"
    for sub in ("usr", "etc", "var", "sysroot"):
        (outside / sub).mkdir(parents=True)
    (sysroot / "bootkit/deploy/test/deploy/evil").symlink_to(outside)


def _symlinked_stateroot(tmp_path: Path, sysroot: Path) -> None:
    outside = tmp_path / "outside-os"
    shutil.copytree(sysroot / "bootkit/deploy/test", outside)
    (sysroot / "bootkit/deploy/evil").symlink_to(outside)


def _symlinked_usr(tmp_path: Path, sysroot: Path) -> None:
    dep = sysroot / "bootkit/deploy/test/deploy/b"
    for sub in ("etc", "var", "sysroot"):
        (dep / sub).mkdir(parents=True)
    (dep / "usr").symlink_to("/")


def _symlinked_var(tmp_path: Path, sysroot: Path) -> None:
    var = sysroot / "bootkit/deploy/test/var"
    shutil.rmtree(var)
    var.symlink_to("/tmp")


def _long_name(tmp_path: Path, sysroot: Path) -> None:
    make_sysroot(tmp_path, "x" * 65)


def _no_setup(tmp_path: Path, sysroot: Path) -> None:
    pass


REFUSED = {
    "dotdot-in-id": (f"bootkit={GOOD}/../a", _no_setup),
    "dotdot-as-id": ("bootkit=/bootkit/deploy/test/deploy/..", _no_setup),
    "dotdot-as-os": ("bootkit=/bootkit/deploy/../deploy/test", _no_setup),
    "symlink-deployment-outside": (
        "bootkit=/bootkit/deploy/test/deploy/evil",
        _symlinked_deployment,
    ),
    "symlink-stateroot-outside": ("bootkit=/bootkit/deploy/evil/deploy/a", _symlinked_stateroot),
    "symlink-usr-inside-deployment": ("bootkit=/bootkit/deploy/test/deploy/b", _symlinked_usr),
    "symlink-var-in-stateroot": (f"bootkit={GOOD}", _symlinked_var),
    "missing-deployment": ("bootkit=/bootkit/deploy/test/deploy/nope", _no_setup),
    "missing-stateroot": ("bootkit=/bootkit/deploy/other/deploy/a", _no_setup),
    "empty-value": ("root=/dev/vda bootkit= rw", _no_setup),
    "bare-word": ("root=/dev/vda bootkit rw", _no_setup),
    "two-values": (f"bootkit={GOOD} bootkit={GOOD}", _no_setup),
    "no-value": ("root=/dev/vda rw", _no_setup),
    "not-the-layout": ("bootkit=/srv/a", _no_setup),
    "trailing-slash": (f"bootkit={GOOD}/", _no_setup),
    "leading-dash": ("bootkit=/bootkit/deploy/test/deploy/-a", _no_setup),
    "shell-metacharacter": ("bootkit=/bootkit/deploy/test/deploy/a$b", _no_setup),
    "name-too-long": (f"bootkit=/bootkit/deploy/test/deploy/{'x' * 65}", _long_name),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_bootkit_argument_is_refused_without_mounting(
    tmp_path: Path, flavour: dict[str, str], case: str
) -> None:
    cmdline, setup = REFUSED[case]
    sysroot = make_sysroot(tmp_path)
    setup(tmp_path, sysroot)

    run = run_hook(tmp_path, sysroot, cmdline, flavour)

    assert run.rc != 0
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bootkit: "), run.stderr
    assert run.after == run.before, "a refused boot must not mount anything"


def test_error_says_what_to_do(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    run = run_hook(
        tmp_path,
        sysroot,
        "bootkit=/bootkit/deploy/test/deploy/gone",
        {"shell": "sh", "path": os.environ["PATH"]},
    )
    assert run.stderr == (
        "bootkit: deployment /bootkit/deploy/test/deploy/gone does not exist; "
        "choose the previous entry in the boot menu\n"
    )


def test_sysroot_that_is_not_a_mount_point_is_refused(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    (tmp_path / "cmdline").write_text(f"bootkit={GOOD}\n")
    proc = subprocess.run(
        [
            *_namespace_command(),
            "sh",
            "-c",
            f"'{HOOK}'; echo rc=$?; grep -c '' /proc/self/mountinfo",
        ],
        env={
            **os.environ,
            "BOOTKIT_SYSROOT": str(sysroot),
            "BOOTKIT_CMDLINE": str(tmp_path / "cmdline"),
        },
        capture_output=True,
        text=True,
    )
    assert "rc=1" in proc.stdout
    assert proc.stderr.startswith("bootkit: ") and proc.stderr.count("\n") == 1


# The same names the Python side accepts, and no others.
NAMES = ["a", "A9", "f41.x86_64", "v1-2_3", "9", "x" * 64, "x" * 65, ".a", "_a", "-a", "a+b", "a:b"]


@pytest.mark.parametrize("name", NAMES)
def test_hook_and_python_agree_on_names(tmp_path: Path, name: str) -> None:
    sysroot = make_sysroot(tmp_path, name)
    run = run_hook(
        tmp_path,
        sysroot,
        f"bootkit=/bootkit/deploy/test/deploy/{name}",
        {"shell": "sh", "path": os.environ["PATH"]},
    )
    assert (run.rc == 0) == is_valid_name(name), run.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_hook_is_posix_and_shellcheck_clean() -> None:
    for dialect in ("sh", "dash"):
        subprocess.run(["shellcheck", "-s", dialect, str(HOOK)], check=True)
