"""`bootkit tpm enroll`: a LUKS2 volume bound to the sysroot's PCR key by systemd-cryptenroll.

The volume is a LUKS2 header on a plain file (cryptsetup formats a file without
device-mapper) and the TPM a swtpm on 127.0.0.1; what the token records is read
back with `cryptsetup luksDump`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.helpers import fails, ok
from test_uki_deploy import init, tree

from bootkit.secureboot import keys, pcrpolicy, uki

from bootkit_testing import tpm as swtpm

pytestmark = pytest.mark.skipif(not uki.DEFAULT_STUB.is_file(),
                                reason="systemd's EFI stub (systemd-boot-efi) is not installed")
TOOLS = pytest.mark.skipif(
    shutil.which("cryptsetup") is None or shutil.which("systemd-cryptenroll") is None,
    reason="cryptsetup and systemd-cryptenroll are needed (scripts/setup installs them)",
)
PASSPHRASE = b"recovery passphrase"


@pytest.fixture
def pcr(tmp_path: Path) -> keys.PcrKeyPair:
    return keys.create_pcr_key(tmp_path / "pcr")


def signed_sysroot(tmp_path: Path, pcr: keys.PcrKeyPair) -> Path:
    sysroot = init(tmp_path / "sys", "--uki", "--pcr-key", pcr.key, "--pcr-cert", pcr.cert)
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 1))
    return sysroot


def luks_volume(tmp_path: Path) -> tuple[Path, Path]:
    volume, key_file = tmp_path / "volume.img", tmp_path / "passphrase"
    key_file.write_bytes(PASSPHRASE)
    key_file.chmod(0o600)
    with open(volume, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", str(volume), str(key_file)],
                   check=True, capture_output=True)
    return volume, key_file


def tpm2_tokens(volume: Path) -> list[dict[str, object]]:
    dump = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", str(volume)],
                          check=True, capture_output=True, text=True).stdout
    tokens = json.loads(dump)["tokens"].values()
    return [t for t in tokens if t.get("type") == "systemd-tpm2"]


@TOOLS
def test_the_volume_gets_a_token_bound_to_the_signed_pcr_11_policy(
        tmp_path: Path, pcr: keys.PcrKeyPair) -> None:
    sysroot = signed_sysroot(tmp_path, pcr)
    volume, key_file = luks_volume(tmp_path)
    if missing := swtpm.missing_prerequisites():
        pytest.skip(f"no software TPM here, missing: {', '.join(missing)}")
    with swtpm.tcti(tmp_path / "tpm", tmp_path / "swtpm.log") as tcti:
        result = ok("tpm", "enroll", "--sysroot", sysroot, "--tpm2-device", tcti,
                    "--unlock-key-file", key_file, volume)
    assert "Enrolled" in result.stdout and "will ask" not in result.stderr
    (token,) = tpm2_tokens(volume)
    assert token["tpm2_pubkey_pcrs"] == [11]
    assert token["tpm2-pcrs"] == []  # nothing bound literally: no PCR 7 by default
    public = base64_pem(token["tpm2_pubkey"])
    assert public == pcr.public.read_bytes()


def base64_pem(value: object) -> bytes:
    import base64

    assert isinstance(value, str)
    return base64.b64decode(value)


def test_print_names_the_policy_and_warns_of_deployments_made_before_the_key(
        tmp_path: Path, pcr: keys.PcrKeyPair) -> None:
    sysroot = init(tmp_path / "sys", "--uki")
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 1))
    ok("init", "--sysroot", sysroot, "--os", "test", "--bootloader", "systemd-boot", "--force",
       "--uki", "--pcr-key", pcr.key, "--pcr-cert", pcr.cert)
    ok("deploy", "--sysroot", sysroot, tree(tmp_path, 2))
    result = ok("tpm", "enroll", "--sysroot", sysroot, "--print", "/dev/vda2")
    assert result.stdout.strip() == (
        "systemd-cryptenroll --tpm2-device=auto '--tpm2-public-key=<the PCR public key>' "
        "--tpm2-public-key-pcrs=11 --tpm2-pcrs= /dev/vda2")
    warning, hint = result.stderr.splitlines()
    assert "deploy again" in hint
    assert "will ask for the passphrase: its UKI carries no PCR policy signed by this key" in warning
    shown = json.loads(ok("tpm", "enroll", "--sysroot", sysroot, "--json", "--pcrs", "7",
                          "/dev/vda2").stdout)
    assert "--tpm2-pcrs=7" in shown["command"]
    assert [u["ref"] for u in shown["unsigned"]] == [warning.split()[2]]
    fp = pcrpolicy.fingerprint(pcrpolicy.load_public_key(pcr.public))
    assert shown["public_key_sha256"] == fp


def test_enrolling_needs_a_pcr_key_and_keeps_pcr_11_out_of_the_literal_binding(
        tmp_path: Path, pcr: keys.PcrKeyPair) -> None:
    plain = init(tmp_path / "plain", "--uki")
    assert "this sysroot has no PCR key" in fails("tpm", "enroll", "--sysroot", plain, "/dev/x")
    sysroot = signed_sysroot(tmp_path, pcr)
    assert "PCR 11 is bound through the signed policy" in fails(
        "tpm", "enroll", "--sysroot", sysroot, "--pcrs", "7+11", "--print", "/dev/x")
    assert "invalid PCR 'x'" in fails("tpm", "enroll", "--sysroot", sysroot, "--pcrs", "x",
                                      "--print", "/dev/x")
