"""Signed PCR 11 policies in UKIs, checked against systemd 252's own tools.

`systemd-measure calculate` predicts PCR 11 without a TPM; `systemd-measure sign`
(252 computes the policy digest in a TPM trial session) runs against a swtpm this
test starts on 127.0.0.1. Both must agree with bootkit byte for byte.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pefile
import pytest
from click.testing import CliRunner
from test_uki import OS_RELEASE, fake_bzimage

from bootkit.cli import main
from bootkit.errors import BootkitError
from bootkit.formats import tpm2
from bootkit.secureboot import keys, pcrpolicy, uki

from bootkit_testing import tpm as swtpm

pytestmark = pytest.mark.skipif(not uki.DEFAULT_STUB.is_file(),
                                reason="systemd's EFI stub (systemd-boot-efi) is not installed")

MEASURE = Path("/usr/lib/systemd/systemd-measure")
# What systemd-measure takes for each section bootkit's UKIs carry and the stub measures.
MEASURE_OPTIONS = {".linux": "--linux", ".osrel": "--osrel", ".cmdline": "--cmdline",
                   ".initrd": "--initrd", ".pcrpkey": "--pcrpkey"}


@pytest.fixture(scope="module")
def pcr_keys(tmp_path_factory: pytest.TempPathFactory) -> keys.PcrKeyPair:
    return keys.create_pcr_key(tmp_path_factory.mktemp("pcr-keys"))


@pytest.fixture
def signed_uki(tmp_path: Path, pcr_keys: keys.PcrKeyPair) -> Path:
    linux = tmp_path / "vmlinuz"
    linux.write_bytes(fake_bzimage())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd-archive" * 100)
    out = tmp_path / "signed.efi"
    signer = pcrpolicy.load_pcr_signer(pcr_keys.key, pcr_keys.cert)
    uki.build_uki(out, linux, [initrd], "root=LABEL=r bootkit=/x quiet", OS_RELEASE,
                  pcr_signer=signer)
    return out


def sections(image: Path) -> dict[str, bytes]:
    pe = pefile.PE(str(image), fast_load=True)
    return {s.Name.rstrip(b"\0").decode(): s.get_data()[: s.Misc_VirtualSize] for s in pe.sections}


def write_sections(image: Path, dest: Path) -> list[str]:
    """The measured sections as files, and the systemd-measure options naming them."""
    args = []
    for name, data in sections(image).items():
        if name in MEASURE_OPTIONS:
            (dest / name.lstrip(".")).write_bytes(data)
            args.append(f"{MEASURE_OPTIONS[name]}={dest / name.lstrip('.')}")
    return args


# --- the arithmetic ----------------------------------------------------------------------


def test_extend_is_hash_of_value_and_hash_of_data() -> None:
    import hashlib

    start = bytes(32)
    expected = hashlib.sha256(start + hashlib.sha256(b"enter-initrd").digest()).digest()
    assert tpm2.extend(start, b"enter-initrd") == expected
    assert len(tpm2.extend(bytes(20), b"x", "sha1")) == 20


def test_pcr_select_sets_one_bit_a_pcr() -> None:
    assert tpm2.pcr_select(frozenset({11})) == b"\x00\x08\x00"
    assert tpm2.pcr_select(frozenset({0, 7, 23})) == b"\x81\x00\x80"
    with pytest.raises(BootkitError, match="no PCR 24"):
        tpm2.pcr_select(frozenset({24}))


def test_policy_refuses_a_value_of_the_wrong_size() -> None:
    with pytest.raises(BootkitError, match="32 bytes, not 20"):
        tpm2.policy_pcr({11: bytes(20)})
    with pytest.raises(BootkitError, match="unknown PCR bank"):
        tpm2.extend(bytes(32), b"", "md5")


def test_stub_version_is_read_from_sdmagic() -> None:
    assert pcrpolicy.stub_version(b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####") == 252
    assert pcrpolicy.stub_version(b"") is None
    with pytest.raises(BootkitError, match="systemd-stub 257"):
        pcrpolicy.measured_sections(257)
    with pytest.raises(BootkitError, match="does not say its version"):
        pcrpolicy.measured_sections(None)


# --- against systemd-measure ---------------------------------------------------------------


@pytest.mark.skipif(not MEASURE.is_file(), reason="systemd-measure (systemd 252) is missing")
def test_predicted_values_equal_systemd_measure_calculate(signed_uki: Path, tmp_path: Path) -> None:
    args = write_sections(signed_uki, tmp_path)
    assert len(args) == 5, args
    proc = subprocess.run([MEASURE, "calculate", *args, "--bank=sha256", "--json=short"],
                          capture_output=True, text=True, check=True)
    theirs = [(e["phase"], e["hash"]) for e in json.loads(proc.stdout)["sha256"]]
    version = pcrpolicy.stub_version(sections(signed_uki)[".sdmagic"])
    ours = [(p.phase, p.value.hex()) for p in pcrpolicy.predict(sections(signed_uki), version)]
    assert ours == theirs


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[str]:
    """A swtpm on 127.0.0.1 for systemd-measure's trial sessions: its TCTI string."""
    if missing := swtpm.missing_prerequisites():
        pytest.skip(f"no software TPM here, missing: {', '.join(missing)}")
    with swtpm.tcti(tmp_path / "tpm", tmp_path / "swtpm.log") as tcti:
        yield tcti


@pytest.mark.skipif(not MEASURE.is_file(), reason="systemd-measure (systemd 252) is missing")
def test_pcrsig_equals_systemd_measure_sign(signed_uki: Path, pcr_keys: keys.PcrKeyPair,
                                            tpm: str, tmp_path: Path) -> None:
    args = write_sections(signed_uki, tmp_path)
    proc = subprocess.run(
        [MEASURE, "sign", f"--tpm2-device={tpm}", *args, f"--private-key={pcr_keys.key}",
         f"--public-key={pcr_keys.public}", "--bank=sha256", "--json=short"],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    # PKCS #1 v1.5 signatures are deterministic: the whole document must be the same.
    assert json.loads(sections(signed_uki)[".pcrsig"]) == json.loads(proc.stdout)


# --- inspecting ------------------------------------------------------------------------------


def test_inspect_finds_every_phase_signed(signed_uki: Path) -> None:
    info = uki.inspect_uki(signed_uki)
    assert info.pcr11 is not None and info.pcr11.problem is None
    assert [p.phase for p in info.pcr11.phases] == list(pcrpolicy.PHASES)
    assert all(p.signed for p in info.pcr11.phases)
    result = CliRunner().invoke(main, ["uki", "inspect", "--require-pcr-signature",
                                       str(signed_uki)])
    assert result.exit_code == 0, result.output
    assert result.output.count("  signed") == 4 and "NOT SIGNED" not in result.output


def _patched(image: Path, section: str, old: bytes, new: bytes, dest: Path) -> Path:
    pe = pefile.PE(str(image), fast_load=True)
    (header,) = [s for s in pe.sections if s.Name.rstrip(b"\0").decode() == section]
    data = bytearray(image.read_bytes())
    start = header.PointerToRawData
    at = data.index(old, start, start + header.SizeOfRawData)
    data[at : at + len(old)] = new
    dest.write_bytes(bytes(data))
    return dest


def test_one_changed_byte_of_the_command_line_is_not_signed(signed_uki: Path,
                                                             tmp_path: Path) -> None:
    tampered = _patched(signed_uki, ".cmdline", b"quiet", b"quieT", tmp_path / "t.efi")
    info = uki.inspect_uki(tampered)
    assert info.pcr11 is not None and not any(p.signed for p in info.pcr11.phases)
    result = CliRunner().invoke(main, ["uki", "inspect", "--require-pcr-signature", str(tampered)])
    assert result.exit_code == 1 and "NOT SIGNED" in result.output


def test_a_signature_by_another_key_is_not_valid(signed_uki: Path, tmp_path: Path) -> None:
    other = keys.create_pcr_key(tmp_path / "other")
    pem = sections(signed_uki)[".pcrpkey"]
    replacement = pcrpolicy.public_key_pem(pcrpolicy.load_public_key(other.public))
    assert len(replacement) == len(pem)
    swapped = _patched(signed_uki, ".pcrpkey", pem, replacement, tmp_path / "swapped.efi")
    check = uki.inspect_uki(swapped).pcr11
    assert check is not None and not any(p.signed for p in check.phases)


def test_a_broken_signature_section_is_reported(signed_uki: Path, tmp_path: Path) -> None:
    broken = _patched(signed_uki, ".pcrsig", b'{"sha256"', b'{"sha256!', tmp_path / "b.efi")
    check = uki.inspect_uki(broken).pcr11
    assert check is not None and check.problem is not None and "not JSON" in check.problem
    assert not any(p.signed for p in check.phases)


def test_a_forged_signature_is_not_valid(signed_uki: Path, tmp_path: Path) -> None:
    document = json.loads(sections(signed_uki)[".pcrsig"])
    first = base64.b64decode(document["sha256"][0]["sig"])
    forged = bytes([first[0] ^ 1]) + first[1:]
    old, new = document["sha256"][0]["sig"], base64.b64encode(forged).decode()
    patched = _patched(signed_uki, ".pcrsig", old.encode(), new.encode(), tmp_path / "f.efi")
    check = uki.inspect_uki(patched).pcr11
    assert check is not None
    assert [p.signed for p in check.phases] == [False, True, True, True]


def test_a_measured_section_bigger_in_memory_than_in_the_file_is_not_predicted(
        signed_uki: Path, tmp_path: Path) -> None:
    # The stub would measure 2 GiB of zeros after the command line; inspect must say so
    # without making them.
    pe = pefile.PE(str(signed_uki), fast_load=True)
    (header,) = [s for s in pe.sections if s.Name.rstrip(b"\0") == b".cmdline"]
    header.Misc_VirtualSize = header.Misc = header.Misc_PhysicalAddress = 1 << 31
    data = bytearray(signed_uki.read_bytes())
    at = header.get_file_offset()
    data[at : at + 40] = header.__pack__()
    hostile = tmp_path / "hostile.efi"
    hostile.write_bytes(bytes(data))
    info = uki.inspect_uki(hostile)
    assert info.pcr11 is None
    assert info.pcr11_problem == "sections larger in memory than in the file: .cmdline"
    assert info.cmdline == "root=LABEL=r bootkit=/x quiet"


def test_an_unsigned_uki_has_predictions_and_no_signature(tmp_path: Path) -> None:
    linux = tmp_path / "vmlinuz"
    linux.write_bytes(fake_bzimage())
    out = tmp_path / "plain.efi"
    uki.build_uki(out, linux, [], "quiet", OS_RELEASE)
    check = uki.inspect_uki(out).pcr11
    assert check is not None and check.problem == "the UKI has no .pcrpkey section"
    assert len(check.phases) == 4 and not any(p.signed for p in check.phases)


# --- keys ------------------------------------------------------------------------------------


def test_keys_create_pcr_writes_the_three_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--pcr", "--json", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)["pcr"]
    assert Path(made["key"]).stat().st_mode & 0o777 == 0o600
    signer = pcrpolicy.load_pcr_signer(Path(made["key"]), Path(made["public"]))
    assert signer.public_pem == Path(made["public"]).read_bytes()
    again = CliRunner().invoke(main, ["keys", "create", "--pcr", str(tmp_path / "k")])
    assert again.exit_code != 0 and "already holds" in again.output


def test_a_key_and_a_certificate_of_two_pairs_are_refused(tmp_path: Path,
                                                          pcr_keys: keys.PcrKeyPair) -> None:
    other = keys.create_pcr_key(tmp_path / "other")
    with pytest.raises(BootkitError, match="does not belong"):
        pcrpolicy.load_pcr_signer(pcr_keys.key, other.cert)


def test_a_secure_boot_key_of_3072_bits_is_refused_as_pcr_key(tmp_path: Path) -> None:
    pairs = keys.create_key_set(tmp_path / "sb", bits=3072)
    with pytest.raises(BootkitError, match="not an RSA 2048 public key"):
        pcrpolicy.load_pcr_signer(pairs["db"].key, pairs["db"].cert)


def test_pcr_signing_needs_the_stub_version(tmp_path: Path, pcr_keys: keys.PcrKeyPair) -> None:
    signer = pcrpolicy.load_pcr_signer(pcr_keys.key, pcr_keys.cert)
    with pytest.raises(BootkitError, match="does not say its version"):
        signer.sign({".linux": b"k", pcrpolicy.PCRPKEY: signer.public_pem}, None)
