"""Deployments booted as Unified Kernel Images (`bootkit init --uki`), signed when a key is set."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import bls_entries, fails, grub_slot_text, make_tree, ok, sdboot_menu, untidy
from test_uki import fake_bzimage

from bootkit.boot import esp, payloads
from bootkit.boot.backends import systemd_boot
from bootkit.boot.payloads import UKI_FILE
from bootkit.secureboot import keys, uki
from bootkit.sysroot.layout import Sysroot

from bootkit_testing import secureboot as snakeoil

pytestmark = pytest.mark.skipif(not uki.DEFAULT_STUB.is_file(),
                                reason="systemd's EFI stub (systemd-boot-efi) is not installed")

KVER = "6.1.0-1-amd64"
SNAKEOIL = pytest.mark.skipif(
    not (snakeoil.SNAKEOIL_KEY.is_file() and snakeoil.SNAKEOIL_CERT.is_file()),
    reason="the snakeoil Secure Boot key (package ovmf) is not installed",
)
SBVERIFY = pytest.mark.skipif(shutil.which("sbverify") is None,
                              reason="sbverify (package sbsigntool) is not installed")


def tree(tmp_path: Path, n: int) -> Path:
    return make_tree(tmp_path / f"tree{n}", version=f"{n}.0",
                     kernel=fake_bzimage(f"{KVER} (builder@host) #{n}"),
                     initrd=f"initramfs {n}\n".encode())


def init(path: Path, *extra: str | Path, bootloader: str = "systemd-boot") -> Path:
    path.mkdir(exist_ok=True)
    ok("init", "--sysroot", path, "--os", "test", "--bootloader", bootloader, *extra)
    return path


def deploy_two(sysroot: Path, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 1), "--karg", "console=ttyS0", env=env)
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 2), "--karg", "quiet", env=env)


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_bytes(snakeoil.SNAKEOIL_PASSPHRASE + b"\n")
    return path


def signing_args(passphrase_file: Path) -> list[str | Path]:
    return ["--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", snakeoil.SNAKEOIL_CERT,
            "--passphrase-file", passphrase_file]


def sbverify(cert: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", "--cert", str(cert), str(image)],
                          capture_output=True, text=True, check=False)


def test_each_deployment_is_a_uki_whose_command_line_names_it(tmp_path: Path) -> None:
    sysroot = init(tmp_path / "sys", "--uki")
    deploy_two(sysroot, tmp_path)
    sr = Sysroot(sysroot)
    boot = sr.boot_path
    menu = sdboot_menu(boot)
    assert [e.version for _, e in menu] == ["2.0", "1.0"]
    for n, (_, entry) in zip((2, 1), menu, strict=True):
        dep = next(d for d in sr.deployments() if d.version == f"{n}.0")
        assert dep.uki
        # An `efi` entry: no kernel or initrd of its own for the bootloader to load.
        assert entry.linux == "" and entry.initrd == ()
        assert entry.efi == f"/bootkit/test/{dep.payload}/{UKI_FILE}"
        assert entry.files == (entry.efi,)
        assert [p.name for p in (boot / entry.efi.lstrip("/")).parent.iterdir()] == [UKI_FILE]
        info = uki.inspect_uki(boot / entry.efi.lstrip("/"))
        karg = "console=ttyS0" if n == 1 else "quiet"
        assert info.cmdline == f"root=LABEL=bootkit-root rw bootkit={dep.path} {karg}"
        assert info.cmdline == entry.options
        assert info.uname == KVER
        assert info.os_release == (tmp_path / f"tree{n}/usr/lib/os-release").read_text()
        assert not info.signed
        sections = {s.name: s for s in info.sections}
        data = (boot / entry.efi.lstrip("/")).read_bytes()
        initrd = sections[".initrd"]
        assert data[initrd.file_offset : initrd.file_offset + initrd.size] == (
            f"initramfs {n}\n".encode()
        )
    # Per deployment, so never shared; the tree's files stay as they were.
    assert len({e.efi for _, e in menu}) == 2
    assert untidy(sr) == []
    assert not any((sr.meta / "tmp").iterdir())


def test_menu_order_is_the_same_as_without_ukis(tmp_path: Path) -> None:
    def menu(sysroot: Path) -> list[tuple[str, str, str, str, str]]:
        return [(f, e.title, e.version, e.sort_key, e.options) for f, e in sdboot_menu(
            Sysroot(sysroot).boot_path)]

    plain = init(tmp_path / "plain")
    with_uki = init(tmp_path / "uki", "--uki")
    for sysroot in (plain, with_uki):
        # Deterministic ids need identical trees: each sysroot gets its own copies.
        work = tmp_path / sysroot.name
        deploy_two(sysroot, work)
        ok("deploy", "--sysroot", sysroot, tree(work, 3), "--no-default")
        ok("rollback", "--sysroot", sysroot)
    assert menu(with_uki) == menu(plain)
    assert [f for f, _ in bls_entries(Sysroot(with_uki).boot_path)] == [
        f for f, _ in bls_entries(Sysroot(plain).boot_path)
    ]
    # systemd's own reading of the entries, where bootctl can run: `efi` entries, same order.
    listed = bootctl_list(Sysroot(with_uki).boot_path)
    assert [Path(e["path"]).name for e in listed] == [f for f, *_ in menu(plain)]
    assert all(e["efi"].endswith(f"/{UKI_FILE}") and "linux" not in e for e in listed)


def bootctl_list(boot: Path) -> list[dict]:
    bootctl = shutil.which("bootctl")
    if bootctl is None:
        pytest.skip("bootctl (Debian package systemd-boot) is not installed")
    # bootctl reads only a directory that is a mount point.
    script = ('mount --bind "$1" "$1" && SYSTEMD_RELAX_ESP_CHECKS=1 '
              '"$2" --esp-path="$1" --boot-path="$1" list --no-pager --json=short')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(boot), bootctl],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot make a mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_grub_chainloads_the_uki(tmp_path: Path) -> None:
    sysroot = init(tmp_path / "sys", "--uki", bootloader="grub")
    deploy_two(sysroot, tmp_path)
    sr = Sysroot(sysroot)
    text = grub_slot_text(sr.boot_path) or ""
    lines = [line.strip() for line in text.splitlines()]
    chains = [line for line in lines if line.startswith("chainloader ")]
    assert len(chains) == 2
    assert not any(line.startswith(("linux ", "initrd ")) for line in lines)
    for (_, entry), line in zip(sdboot_menu(sr.boot_path), chains, strict=True):
        assert line == f"chainloader {entry.efi} {entry.options}"


def test_existing_deployments_keep_their_kind(tmp_path: Path) -> None:
    sysroot = init(tmp_path / "sys")
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 1))
    init(sysroot, "--uki", "--force")
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 2))
    entries = {e.version: e for _, e in sdboot_menu(Sysroot(sysroot).boot_path)}
    assert entries["1.0"].linux and not entries["1.0"].efi
    assert entries["2.0"].efi and not entries["2.0"].linux
    # Undeploying the UKI deployment takes its UKI off $BOOT.
    efi = Sysroot(sysroot).boot_path / entries["2.0"].efi.lstrip("/")
    ok("set-default", "--sysroot", sysroot, "1")
    ok("undeploy", "--sysroot", sysroot, "2")
    assert not efi.exists()
    assert untidy(Sysroot(sysroot)) == []


def test_changing_the_root_argument_names_the_ukis_to_redeploy(tmp_path: Path) -> None:
    sysroot = init(tmp_path / "sys")
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 1))
    init(sysroot, "--uki", "--force")
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 2))
    uki_ref = json.loads(ok("status", "--sysroot", sysroot, "--json").stdout)["deployments"][0]

    same = ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot",
              "--uki", "--force")
    assert "warning" not in same.output
    moved = ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot",
               "--uki", "--force", "--root-arg", "root=LABEL=other")
    # Only the UKI deployment: the other one's entry took the new argument.
    assert f"warning: test/{uki_ref['id']} boots a UKI" in moved.output
    assert "root=LABEL=bootkit-root; deploy it again" in moved.output


@SNAKEOIL
@SBVERIFY
def test_deploy_signs_every_uki(tmp_path: Path, passphrase_file: Path) -> None:
    sysroot = init(tmp_path / "sys", "--uki", *signing_args(passphrase_file))
    deploy_two(sysroot, tmp_path)
    boot = Sysroot(sysroot).boot_path
    other = keys.create_key_set(tmp_path / "other")["db"]
    images = [boot / e.efi.lstrip("/") for _, e in bls_entries(boot)]
    assert len(images) == 2
    for image in images:
        assert uki.inspect_uki(image).signed
        good = sbverify(snakeoil.SNAKEOIL_CERT, image)
        assert good.returncode == 0, good.stderr + good.stdout
        assert sbverify(other.cert, image).returncode != 0
    # Content-addressed by what is on $BOOT: the signed image.
    for image in images:
        assert image.parent.name == payloads.payload_name(KVER, [image])
    assert untidy(Sysroot(sysroot)) == []


@SNAKEOIL
def test_key_passphrase_from_the_environment(tmp_path: Path) -> None:
    env = {keys.PASSPHRASE_ENV: snakeoil.SNAKEOIL_PASSPHRASE.decode()}
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot", "--uki",
       "--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", snakeoil.SNAKEOIL_CERT, env=env)
    # Without the passphrase, deploy stops before it imports anything.
    message = fails("deploy", "--sysroot", sysroot, tree(tmp_path, 1))
    assert "encrypted" in message
    assert Sysroot(sysroot).state().deployments == ()
    assert not any((Sysroot(sysroot).stateroot("test") / "deploy").iterdir())
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 2), env=env)
    ((_, entry),) = bls_entries(Sysroot(sysroot).boot_path)
    assert uki.inspect_uki(Sysroot(sysroot).boot_path / entry.efi.lstrip("/")).signed


@SNAKEOIL
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", snakeoil.SNAKEOIL_CERT],
         "signing needs Unified Kernel Images"),
        (["--uki", "--signing-key", snakeoil.SNAKEOIL_KEY], "go together"),
        (["--uki", "--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", snakeoil.SNAKEOIL_CERT],
         "is encrypted"),
        (["--uki", "--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", snakeoil.SNAKEOIL_CERT,
          "--passphrase-file", "WRONG"], "wrong passphrase"),
        (["--uki", "--signing-key", snakeoil.SNAKEOIL_KEY, "--signing-cert", "OTHER",
          "--passphrase-file", "GOOD"], "does not belong"),
    ],
)
def test_init_checks_the_key(tmp_path: Path, passphrase_file: Path, args: list, message: str
                             ) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    other = keys.create_key_set(tmp_path / "other")["db"].cert
    args = [{"WRONG": wrong, "GOOD": passphrase_file, "OTHER": other}.get(a, a) for a in args]
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    line = fails("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot",
                 *args, env={keys.PASSPHRASE_ENV: ""})
    assert message in line
    assert not (sysroot / "bootkit").exists()


@SNAKEOIL
@SBVERIFY
def test_bootloader_install_signs_systemd_boot(tmp_path: Path, passphrase_file: Path) -> None:
    if not systemd_boot.SYSTEMD_BOOT_EFI.is_file():
        pytest.skip("systemd-boot (systemd-boot-efi) is not installed")
    sysroot = init(tmp_path / "sys", "--uki", *signing_args(passphrase_file))
    out = ok("bootloader", "install", "--sysroot", sysroot).stdout
    assert "signed for" in out
    boot = Sysroot(sysroot).boot_path
    for rel in (esp.REMOVABLE_PATH, systemd_boot.VENDOR_PATH):
        result = sbverify(snakeoil.SNAKEOIL_CERT, boot / rel)
        assert result.returncode == 0, result.stderr + result.stdout
    plain = init(tmp_path / "plain")
    ok("bootloader", "install", "--sysroot", plain)
    assert not uki.inspect_uki(Sysroot(plain).boot_path / esp.REMOVABLE_PATH).signed
    none = init(tmp_path / "none", bootloader="none")
    assert "nothing to install" in fails("bootloader", "install", "--sysroot", none)


# --- signed PCR 11 policies ------------------------------------------------------------------


def test_every_deployment_carries_a_pcr_policy_signed_with_the_configured_key(
        tmp_path: Path) -> None:
    from bootkit.secureboot import pcrpolicy

    pcr = keys.create_pcr_key(tmp_path / "pcr")
    sysroot = init(tmp_path / "sys", "--uki", "--pcr-key", pcr.key, "--pcr-cert", pcr.cert)
    deploy_two(sysroot, tmp_path)
    sr = Sysroot(sysroot)
    expected_key = pcrpolicy.fingerprint(pcrpolicy.load_public_key(pcr.public))
    for dep in sr.deployments():
        info = uki.inspect_uki(sr.boot_path / "bootkit" / "test" / dep.payload / UKI_FILE)
        assert info.cmdline is not None and f"bootkit={dep.path}" in info.cmdline
        assert info.pcr11 is not None and info.pcr11.public_key == expected_key
        assert all(p.signed for p in info.pcr11.phases), info.pcr11
    config = json.loads((sysroot / "bootkit" / "config.json").read_text())
    assert (config["pcr_key"], config["pcr_cert"]) == (str(pcr.key), str(pcr.cert))


def test_a_pcr_key_needs_ukis_and_its_public_half(tmp_path: Path) -> None:
    pcr = keys.create_pcr_key(tmp_path / "pcr")
    sysroot = tmp_path / "sys"
    sysroot.mkdir()
    base = ["init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot"]
    assert "needs Unified Kernel Images" in fails(*base, "--pcr-key", pcr.key, "--pcr-cert",
                                                  pcr.cert)
    assert "go together" in fails(*base, "--uki", "--pcr-key", pcr.key)
    other = keys.create_pcr_key(tmp_path / "other")
    assert "does not belong" in fails(*base, "--uki", "--pcr-key", pcr.key, "--pcr-cert",
                                      other.public)
    assert not (sysroot / "bootkit").exists()
