"""Debian 12 with systemd, booted through dracut and bootkit's module, updated from inside.

One image per bootloader, five boots, each a step of what an admin does on a running
atomic desktop whose ESP is mounted read-only (see
bootkit_testing/debian/guest_report.py for what the guest reports and does):

1. `stage`: deployment A comes up; inside it, `bootkit deploy` stages tree B from a
   tar archive on a second disk; afterwards /etc is edited and data written to
   /home, /root, /usr/local, /opt and Flatpak's and Podman's /var; a clean shutdown
   finalizes B;
2. `crash`: B comes up with all of that; an update is staged, then the machine goes
   down at once (sysrq), without finalizing;
3. `fail`: B comes up again with nothing left of the staged update; an update is
   staged, then $BOOT is filled, so finalizing fails at shutdown;
4. `update`: B comes up again, a failed unit and `bootkit status` say why; inside,
   an update at once (`--no-stage`), a kernel argument of the admin's, `cleanup`;
5. `rollback`: C comes up with the data, its image's and the admin's kernel
   arguments; inside, `bootkit rollback`.

Each boot's console must show the initramfs switching into the deployment bootkit
chose and systemd reaching multi-user.target there. Which step the guest runs is
passed with QEMU's fw_cfg, so only the guest changes the disk: the boots of a
bootloader run one after another in a thread while the tests check the finished
ones, and both bootloaders' chains run side by side (about halving the time on a
machine with two free cores).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from bootkit_testing import debian, harness, qemu
from bootkit_testing.debian import SITE_CONF, SITE_CONF_EDITED, TREE_A, TREE_B, Variant
from bootkit_testing.debian.guest_report import ADMIN_KARG, BOOT, LAYOUT, USER_DATA
from bootkit_testing.harness import BootReport, Disk, Run, menu_titles
from bootkit_testing.kernel import KernelTree
from bootkit_testing.qemu import Machine
from bootkit_testing.testos import MARKER

pytestmark = pytest.mark.qemu

OS = "debian"
VAR = f"/bootkit/deploy/{OS}/var"
BOOTLOADERS = ("systemd-boot", "grub")
# What the guest does in each boot, in order (see bootkit_testing/debian/guest_report.py).
STEPS = ("stage", "crash", "fail", "update", "rollback")
# A boot with an update inside it, under TCG on a loaded machine.
BOOT_TIMEOUT = 480.0
# Seen on the console when a boot went wrong; waiting for the timeout would tell nothing more.
_FAILED = re.compile(
    r"You are in emergency mode|Entering emergency mode|root account is locked"
    r"|Give root password|Kernel panic|bootkit: boot failed"
)


@dataclass(frozen=True)
class DebianSetup:
    tree_a: Path
    update_disk: Path  # ext4 holding the tar archive of tree B
    build_seconds: float


@pytest.fixture(scope="session")
def debian_setup(boot_kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> DebianSetup:
    started = time.monotonic()
    try:
        base = debian.ensure_base(boot_kernel)
    except debian.DebianUnavailable as err:
        pytest.skip(str(err))
    work = tmp_path_factory.mktemp("debian")
    tree_a = debian.make_tree(work / "tree-a", base, TREE_A)
    tree_b = debian.derive_tree(work / "tree-b", tree_a, TREE_B)
    disk = debian.make_update_disk(work / "update.img", tree_b, work)
    return DebianSetup(tree_a, disk, time.monotonic() - started)


# --- booting with a second disk and the step for the guest ------------------------------

# Chains start VMs from threads of their own; see _GuestVM.__enter__.
_QEMU_COMMAND_LOCK = threading.Lock()


class _GuestVM(qemu.VirtualMachine):
    """The harness's VM with more QEMU arguments after its own."""

    def __init__(self, machine: Machine, workdir: Path, name: str, extra: Sequence[str]) -> None:
        super().__init__(machine, workdir, name)
        self.extra = tuple(extra)

    def __enter__(self) -> _GuestVM:
        # The harness makes the command line in one function, swapped while QEMU starts.
        with _QEMU_COMMAND_LOCK:
            command = qemu.qemu_command
            with mock.patch.object(qemu, "qemu_command",
                                   lambda m, v: [*command(m, v), *self.extra]):
                super().__enter__()
        return self


def guest_args(update_disk: Path, step: str) -> list[str]:
    return [
        "-drive", f"if=none,id=update,format=raw,readonly=on,file={update_disk}",
        "-device", "virtio-blk-pci,drive=update",
        "-fw_cfg", f"name={debian.STEP_FW_CFG},string={step}",
    ]


@dataclass(frozen=True)
class Boot:
    run: Run
    report: BootReport


def boot(vm: _GuestVM) -> Boot:
    """Boot until the guest powers off after its report; fail early on a failed boot."""
    with vm:
        seen = vm.wait_for(re.compile(rf"{MARKER} done|{_FAILED.pattern}"), BOOT_TIMEOUT)
        if not seen.group(0).endswith(" done"):
            raise vm.fail(f"the boot failed: {seen.group(0)!r}")
        code = vm.wait_exit(120)
        run = Run(vm.console(), vm.elapsed, code, vm.log_path)
    return Boot(run, BootReport.parse(run.console, run.seconds))


class Chain:
    """One bootloader's image and its boots, one after another in a thread of their own.

    Only the guest changes the disk, so the boots need not wait for the tests: the
    tests check a boot while the next one runs, and the chains of both bootloaders
    run side by side.
    """

    def __init__(self, bootloader: str, workdir: Path, setup: DebianSetup) -> None:
        self.bootloader = bootloader
        self.setup = setup
        self.disk = Disk(workdir / "disk.img", bootloader, workdir)
        self.paths: dict[str, str] = {}  # variant name -> deployment path
        self.done: set[str] = set()  # steps whose test passed
        self.timings: list[str] = []
        self._outcomes: dict[str, Boot | str | Exception] = {}
        self._finished = {step: threading.Event() for step in ("create", *STEPS)}
        self._vm: _GuestVM | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"debian-{bootloader}", daemon=True)

    # --- the thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopping = True
        if self._vm is not None:
            self._vm.stop()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        for step in ("create", *STEPS):
            if self._stopping:
                break
            try:
                self._outcomes[step] = self._create() if step == "create" else self._boot(step)
            except Exception as err:  # handed to the test of this step; later steps never run
                self._outcomes[step] = err
                break
            finally:
                self._finished[step].set()
        for event in self._finished.values():
            event.set()

    def _create(self) -> str:
        started = time.monotonic()
        created = json.loads(self.disk.bootkit(
            "create", self.disk.image, self.setup.tree_a, "--size", "2G", "--esp-size", "128M",
            "--bootloader", self.bootloader, "--timeout", str(harness.MENU_TIMEOUT), "--force",
            "--json", *(f"--karg={k}" for k in harness.TEST_KARGS),
        ))
        self.timings.append(f"image create {time.monotonic() - started:.1f} s")
        (dep_id,) = created["deployments"]
        return f"/bootkit/deploy/{OS}/deploy/{dep_id}"

    def _boot(self, step: str) -> Boot:
        name = f"{self.bootloader}-debian{len(self.disk.boots) + 1}-{step}"
        self._vm = _GuestVM(Machine(self.disk.image), self.disk.workdir, name,
                            guest_args(self.setup.update_disk, step))
        try:
            result = boot(self._vm)
        finally:
            self._vm = None
        self.disk.boots.append(result.run.seconds)
        in_guest = result.report.values.get("step-seconds")
        self.timings.append(f"boot '{step}' {result.run.seconds:.1f} s"
                            + (f" (of which {step} {in_guest} s)" if in_guest else ""))
        return result

    # --- for the tests ----------------------------------------------------------------

    def outcome(self, step: str) -> Boot | str:
        """What the step gave (the boot, or for 'create' the first deployment's path)."""
        # Each boot has its own timeout; this only guards against a thread gone astray.
        if not self._finished[step].wait(timeout=(len(STEPS) + 1) * (BOOT_TIMEOUT + 300)):
            pytest.fail(f"the {self.bootloader} chain did not get to the end of '{step}'")
        outcome = self._outcomes.get(step)
        if outcome is None:
            pytest.skip(f"the '{step}' boot did not run, an earlier step failed")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def boot(self, step: str) -> tuple[Run, BootReport]:
        self.paths["A"] = str(self.outcome("create"))
        result = self.outcome(step)
        assert isinstance(result, Boot)
        return result.run, result.report

    def require(self, step: str) -> None:
        if step not in self.done:
            pytest.skip(f"needs the '{step}' step, which did not pass")


def _selected_bootloaders(request: pytest.FixtureRequest) -> list[str]:
    """The bootloaders the selected tests of this module ask for (-k may deselect some)."""
    wanted = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None:
            wanted.add(callspec.params.get("bootloader"))
    return [b for b in BOOTLOADERS if b in wanted]


@pytest.fixture(scope="module")
def chains(request: pytest.FixtureRequest, debian_setup: DebianSetup,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Chain]]:
    chains = {
        b: Chain(b, tmp_path_factory.mktemp(f"debian-{b}"), debian_setup)
        for b in _selected_bootloaders(request)
    }
    with ExitStack() as stack:
        for chain in chains.values():
            chain.start()
            stack.callback(chain.close)
        yield chains
    # Kept for the record: how long each part took.
    print(f"\nDebian test trees {debian_setup.build_seconds:.1f} s")
    for chain in chains.values():
        print(f"{chain.bootloader}: " + "; ".join(chain.timings))


@pytest.fixture(params=BOOTLOADERS)
def bootloader(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def chain(chains: dict[str, Chain], bootloader: str) -> Chain:
    return chains[bootloader]


# --- what a person checks after a boot -----------------------------------------------------


def assert_came_up_in(run: Run, report: BootReport, path: str, variant: Variant) -> None:
    """The initramfs switched into `path` and systemd reached multi-user.target in it."""
    text = run.text
    switched = text.find(f"bootkit: switching root to {path}")
    assert switched >= 0, f"no 'bootkit: switching root to {path}' on the console"
    welcome = text.find(f"Welcome to {variant.title}!", switched)
    assert welcome > switched, f"systemd of {variant.title!r} did not start after the switch"
    assert re.search(r"Reached target .*multi-user\.target", text[welcome:]), (
        "systemd did not reach multi-user.target in the deployment"
    )
    assert report.values.get("multi-user") == "active", report.values
    assert report.values.get("version") == variant.os_release.version_id, report.values
    assert report.bootkit_arg == path, report.values
    assert report.values.get("step-error") is None, report.values["step-error"]


def assert_mounts(report: BootReport, path: str, failed: str = "") -> None:
    """/ is the deployment, /usr read-only, /etc writable in it, /var shared, /sysroot and
    $BOOT read-only; `failed`: the failed units expected."""
    root = report.mount("/")
    assert root is not None and root.root == path and not root.read_only, report.values
    usr = report.mount("/usr")
    assert usr is not None and usr.root == f"{path}/usr" and usr.read_only, report.values
    etc = report.mount("/etc")
    assert etc is not None and etc.root == path, report.values
    var = report.mount("/var")
    assert var is not None and var.root == VAR and not var.read_only, report.values
    sysroot = report.mount("/sysroot")
    assert sysroot is not None and sysroot.root == "/" and sysroot.read_only, report.values
    esp = report.mount(BOOT)
    # As the guest's fstab says: bootkit writes there in a mount namespace of its own.
    assert esp is not None and esp.root == "/" and esp.read_only, report.values
    assert report.values.get("source:/sysroot") == report.values.get("source:/"), report.values
    assert report.values.get("source:/sysroot/efi") != report.values.get("source:/"), report.values
    assert report.writable("/usr") is False
    assert report.writable("/etc") is True
    assert report.writable("/var") is True
    # Read-only for everyone: only bootkit makes it writable, for itself.
    assert report.writable("/sysroot") is False
    assert report.writable(BOOT) is False
    assert report.values.get("failed") == failed, f"failed units: {report.values.get('failed')}"


def deployments(report: BootReport, key: str) -> list[dict]:
    return json.loads(report.values[key])["deployments"]


def assert_status(deps: list[dict], order: list[str], default: str, booted: str) -> None:
    """`bootkit status --json` in the guest: menu order, default and booted as expected."""
    assert [d["path"] for d in deps] == order, deps
    assert [d["path"] for d in deps if d["default"]] == [default], deps
    assert [d["path"] for d in deps if d["booted"]] == [booted], deps


# --- the scenario -------------------------------------------------------------------------


def status_of(report: BootReport, key: str) -> dict:
    return json.loads(report.values[key])


def assert_step_left_boot_read_only(report: BootReport) -> None:
    assert report.values.get("step-error") is None, report.values["step-error"]
    assert report.values["write-after:/sysroot"] == "no", "bootkit left /sysroot writable"
    assert report.values[f"write-after:{BOOT}"] == "no", "bootkit left $BOOT writable"
    assert "ro" in report.values[f"mount-after:{BOOT}"].split(","), report.values


def assert_user_data(report: BootReport) -> None:
    """The layout's symlinks are there, and what the admin wrote before the first update."""
    links = {path: report.values[f"link:{path}"] for path in LAYOUT}
    assert links == {
        "/home": "var/home", "/root": "var/roothome", "/opt": "var/opt", "/srv": "var/srv",
        "/mnt": "var/mnt", "/media": "run/media", "/usr/local": "../var/usrlocal",
    }, links
    for path in USER_DATA:
        assert report.values[f"data:{path}"] == f"kept {path}", path
    assert report.values["etc:site"] == SITE_CONF_EDITED.strip()
    assert report.values["var:note"] == f"written by {TREE_A.os_release.version_id} before the update"


def assert_nothing_staged(report: BootReport, kept: list[str]) -> None:
    """No staged deployment, and nothing left of one: only `kept` paths' trees and payloads."""
    current = status_of(report, "status")
    assert current.get("staged") is None, current
    names = {Path(p).name for p in kept}
    assert report.values["ls:deploy"].split() == sorted(
        [*names, *(f"{n}.json" for n in names)]
    ), report.values["ls:deploy"]
    payloads = sorted({d["payload"] for d in current["deployments"]})
    assert report.values["ls:payloads"].split() == payloads, report.values["ls:payloads"]
    assert "staged.json" not in report.values["ls:boot-bootkit"].split()


def test_a_stages_an_update_that_shutdown_finalizes(chain: Chain) -> None:
    run, report = chain.boot("stage")
    a = chain.paths["A"]
    assert_came_up_in(run, report, a, TREE_A)
    assert_mounts(report, a)
    assert_status(deployments(report, "status"), [a], default=a, booted=a)
    assert report.values["etc:site"] == SITE_CONF.strip()
    assert report.values["etc:defaults"] == TREE_A.defaults.strip()
    assert report.history("var") == []
    # The first deploy moved the tree's /root into the shared /var: /root is a symlink.
    assert report.values["link:/root"] == "var/roothome"
    # Staged: on disk, not in the menu, switched at shutdown.
    assert report.values.get("step") == "stage"
    staged = status_of(report, "status-staged")
    assert staged["staged"] is not None and not staged["staged"]["locked"], staged
    assert_status(staged["deployments"], [a], default=a, booted=a)
    b = staged["staged"]["path"]
    assert staged["staged"]["version"] == TREE_B.os_release.version_id
    assert_status(deployments(report, "status-after"), [a], default=a, booted=a)
    assert_step_left_boot_read_only(report)
    chain.paths["B"] = b
    chain.done.add("stage")


def test_b_comes_up_with_what_was_changed_after_staging(chain: Chain) -> None:
    chain.require("stage")
    a, b = chain.paths["A"], chain.paths["B"]
    run, report = chain.boot("crash")
    assert_came_up_in(run, report, b, TREE_B)
    assert_mounts(report, b)
    assert menu_titles(run.console, [TREE_A.title, TREE_B.title]) == [TREE_B.title, TREE_A.title]
    assert_status(deployments(report, "status"), [b, a], default=b, booted=b)
    # /etc was merged from A at shutdown: the edit made after staging came along.
    assert_user_data(report)
    assert report.values["etc:defaults"] == TREE_B.defaults.strip()
    assert report.history("var") == [TREE_A.os_release.version_id]
    # B's image ships a kernel argument; A's own arguments came along.
    cmdline = report.values["cmdline"].split()
    assert "bootkit.test.image=b" in cmdline and "console=ttyS0" in cmdline, cmdline
    assert_nothing_staged(report, [a, b])
    # The step: an update staged, then a crash.
    staged = status_of(report, "status-staged")["staged"]
    assert staged is not None, report.values["status-staged"]
    chain.paths["crashed"] = staged["path"]
    assert_step_left_boot_read_only(report)
    chain.done.add("crash")


def test_a_crash_before_finalizing_boots_the_old_default_and_leaves_nothing(chain: Chain) -> None:
    chain.require("crash")
    a, b = chain.paths["A"], chain.paths["B"]
    run, report = chain.boot("fail")
    assert_came_up_in(run, report, b, TREE_B)
    assert_mounts(report, b)
    assert_status(deployments(report, "status"), [b, a], default=b, booted=b)
    assert chain.paths["crashed"] not in report.values["ls:deploy"]
    assert_nothing_staged(report, [a, b])
    assert "was not applied" in report.values["log:bootkit-finalize-staged.service"], (
        report.values["log:bootkit-finalize-staged.service"]
    )
    assert_user_data(report)
    # The step: an update staged, then $BOOT filled.
    assert status_of(report, "status-staged")["staged"] is not None
    assert int(report.values["boot-free"]) == 0, report.values["boot-free"]
    assert_step_left_boot_read_only(report)
    chain.done.add("fail")


def test_a_failed_finalize_switches_nothing_and_is_shown(chain: Chain) -> None:
    chain.require("fail")
    a, b = chain.paths["A"], chain.paths["B"]
    run, report = chain.boot("update")
    assert_came_up_in(run, report, b, TREE_B)
    assert_mounts(report, b, failed="bootkit-finalize-failed.service")
    assert_status(deployments(report, "status"), [b, a], default=b, booted=b)
    failure = status_of(report, "status")["finalize_failure"]
    assert failure is not None and "space" in failure["reason"].lower(), failure
    assert failure["reason"] in report.values["log:bootkit-finalize-failed.service"]
    assert_nothing_staged(report, [a, b])
    assert_user_data(report)
    # The step: an update at once, an argument of the admin's, cleanup.
    after = status_of(report, "status-after")
    c = json.loads(report.values["deploy"])["path"]
    assert_status(after["deployments"], [c, b], default=c, booted=b)
    assert after["finalize_failure"] is None, after
    assert ADMIN_KARG in next(d for d in after["deployments"] if d["path"] == c)["kargs"]
    assert_step_left_boot_read_only(report)
    chain.paths["C"] = c
    chain.done.add("update")


def test_the_update_keeps_the_data_and_both_kinds_of_kernel_arguments(chain: Chain) -> None:
    chain.require("update")
    b, c = chain.paths["B"], chain.paths["C"]
    run, report = chain.boot("rollback")
    assert_came_up_in(run, report, c, TREE_B)
    assert_mounts(report, c)
    assert_status(deployments(report, "status"), [c, b], default=c, booted=c)
    assert_user_data(report)
    cmdline = report.values["cmdline"].split()
    assert {"bootkit.test.image=b", ADMIN_KARG, "console=ttyS0"} <= set(cmdline), cmdline
    assert_status(deployments(report, "status-after"), [b, c], default=b, booted=c)
    assert_step_left_boot_read_only(report)


def assert_marked_good(bootloader: str, report: BootReport, dep: dict) -> None:
    """This boot of `dep` was counted, and marked good once boot-complete.target was reached."""
    values = report.values
    assert values.get("boot-complete") == "active", values
    assert values.get("unit:bootkit-mark-good.service") == "active", values
    bless, own = values["log:systemd-bless-boot.service"], values["log:bootkit-mark-good.service"]
    if bootloader == "systemd-boot":
        # systemd-boot counted the entry (one try done). The ESP is mounted read-only,
        # so systemd-bless-boot gave way (bootkit's drop-in) and bootkit's unit
        # renamed the entry from a mount namespace of its own.
        assert values.get("unit:systemd-bless-boot.service") == "inactive", values
        assert "Marked boot as 'good'" not in bless, bless
        assert f"Marked {dep['os']}/{dep['id']} good: renamed" in own, own
    else:
        # GRUB counts in bootkit's grubenv and sets no LoaderBootCountPath, so
        # systemd-bless-boot is not pulled in; bootkit's unit clears the counter.
        assert values.get("unit:systemd-bless-boot.service") == "inactive", values
        assert f"Marked {dep['os']}/{dep['id']} good" in own, own
        assert "cleared the GRUB boot counter (2 tries were left)" in own, own
    assert dep["boot"] == "good" and dep["tries_left"] is None, dep


def test_boots_marked_good_through_boot_complete(chain: Chain) -> None:
    """With boot counting on (3 tries), each deployment's first boot is counted, then
    marked good once systemd reaches boot-complete.target, with $BOOT read-only; a good
    entry stays good through later switches."""
    chain.require("stage")
    a, b = chain.paths["A"], chain.paths["B"]
    _, first = chain.boot("stage")
    (dep_a,) = deployments(first, "status")
    assert_marked_good(chain.bootloader, first, dep_a)
    # B's first boot, after finalizing: counted, then marked good before the report ran.
    _, second = chain.boot("crash")
    dep_b = next(d for d in deployments(second, "status") if d["booted"])
    assert dep_b["path"] == b
    assert_marked_good(chain.bootloader, second, dep_b)
    after = {d["path"]: d for d in deployments(second, "status-after")}
    assert [after[a]["boot"], after[b]["boot"]] == ["good", "good"], after
