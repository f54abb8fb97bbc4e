from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pefile
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from bootkit.cli import main
from bootkit.errors import BootkitError
from bootkit.formats import der
from bootkit.secureboot import authenticode, keys, uki

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
needs_sbverify = pytest.mark.skipif(shutil.which("sbverify") is None,
                                    reason="sbverify (sbsigntool) is not installed")
needs_systemd_boot = pytest.mark.skipif(not SYSTEMD_BOOT.is_file() or not uki.DEFAULT_STUB.is_file(),
                                        reason="systemd-boot-efi is not installed")


@pytest.fixture(scope="module")
def key_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[keys.KeyPair, keys.KeyPair]:
    # db signs; KEK stands in for any other key, one the firmware would not accept.
    pairs = keys.create_key_set(tmp_path_factory.mktemp("keys"), "test")
    return pairs["db"], pairs["KEK"]


def sbverify(cert: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", "--cert", str(cert), str(image)],
                          capture_output=True, text=True, check=False)


def sign(pair: keys.KeyPair, source: Path, output: Path) -> bytes:
    authenticode.sign_file(source, output, keys.load_private_key(pair.key),
                           keys.load_certificate(pair.cert))
    return output.read_bytes()


@pytest.fixture
def small_uki(tmp_path: Path) -> Path:
    sections = [
        uki.Section(".osrel", b"ID=test\n"),
        uki.Section(".cmdline", b"console=ttyS0"),
        uki.Section(".linux", bytes(range(256)) * 390 + b"odd"),  # odd size: 8-byte padding
    ]
    out = tmp_path / "uki.efi"
    out.write_bytes(uki.assemble(uki.DEFAULT_STUB.read_bytes(), sections))
    return out


@needs_sbverify
@needs_systemd_boot
def test_signed_systemd_boot_verifies_only_with_its_key(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair]
) -> None:
    mine, other = key_sets
    signed = tmp_path / "BOOTX64.EFI"
    sign(mine, SYSTEMD_BOOT, signed)
    ok = sbverify(mine.cert, signed)
    assert ok.returncode == 0, ok.stderr
    assert "Signature verification OK" in ok.stdout + ok.stderr
    assert sbverify(other.cert, signed).returncode != 0


@needs_sbverify
@needs_systemd_boot
def test_signed_uki_verifies_and_a_changed_byte_breaks_it(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair], small_uki: Path
) -> None:
    mine, other = key_sets
    signed = tmp_path / "signed.efi"
    data = sign(mine, small_uki, signed)
    assert sbverify(mine.cert, signed).returncode == 0
    assert sbverify(other.cert, signed).returncode != 0

    cmdline = next(s for s in uki.inspect_uki(signed).sections if s.name == ".cmdline")
    tampered = bytearray(data)
    tampered[cmdline.file_offset] ^= 0x01
    bad = tmp_path / "tampered.efi"
    bad.write_bytes(tampered)
    assert sbverify(mine.cert, bad).returncode != 0


@needs_systemd_boot
@pytest.mark.parametrize("which", ["uki", "systemd-boot"])
def test_certificate_table_layout_and_checksum(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair], small_uki: Path, which: str
) -> None:
    # systemd-boot ends in a COFF symbol table of odd length: trailing data that
    # is hashed, then padded to the certificate table's 8-byte boundary.
    source = small_uki if which == "uki" else SYSTEMD_BOOT
    unsigned = source.read_bytes()
    data = sign(key_sets[0], source, tmp_path / "signed.efi")
    pe = pefile.PE(data=data)
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[authenticode.SECURITY_DIRECTORY]
    assert security.VirtualAddress == len(unsigned) + (-len(unsigned) % 8)
    assert security.Size % 8 == 0
    assert security.VirtualAddress + security.Size == len(data)
    assert data[len(unsigned) : security.VirtualAddress] == bytes(-len(unsigned) % 8)
    assert pe.OPTIONAL_HEADER.CheckSum == pe.generate_checksum()

    (entry,) = authenticode.embedded_signatures(data)
    assert (entry.revision, entry.certificate_type) == (0x0200, 0x0002)
    # The signed hash is the Authenticode hash of the file as it is now...
    assert entry.signed_digest() == authenticode.image_digest(data)
    # ...which leaves out the checksum and certificate-table fields and the table itself.
    padded = unsigned + bytes(-len(unsigned) % 8)
    assert entry.signed_digest() == authenticode.image_digest(padded)
    (cert,) = entry.certificates()
    assert cert == keys.load_certificate(key_sets[0].cert)


@needs_systemd_boot
def test_signed_data_structure(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair]
) -> None:
    data = sign(key_sets[0], SYSTEMD_BOOT, tmp_path / "signed.efi")
    (entry,) = authenticode.embedded_signatures(data)
    content_info = der.parse(entry.pkcs7)
    oid, body = content_info.children()
    assert oid.oid() == authenticode.OID_SIGNED_DATA
    signed_data = body.children()[0]
    version, _digests, encap, _certs, signer_infos = signed_data.children()
    assert der.parse(version.encoded).content == b"\x01"
    assert encap.children()[0].oid() == authenticode.SPC_INDIRECT_DATA_OBJID
    (signer_info,) = signer_infos.children()
    attributes = signer_info.children()[3]
    assert attributes.tag == der.CONTEXT | der.CONSTRUCTED | 0
    types = {a.children()[0].oid(): a.children()[1].children()[0] for a in attributes.children()}
    assert types[authenticode.OID_CONTENT_TYPE].oid() == authenticode.SPC_INDIRECT_DATA_OBJID
    assert authenticode.OID_MESSAGE_DIGEST in types


@needs_systemd_boot
def test_already_signed_needs_replace(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair]
) -> None:
    mine, other = key_sets
    first = tmp_path / "first.efi"
    sign(mine, SYSTEMD_BOOT, first)
    with pytest.raises(BootkitError, match="already signed"):
        sign(other, first, tmp_path / "second.efi")
    assert not (tmp_path / "second.efi").exists()
    second = tmp_path / "second.efi"
    authenticode.sign_file(first, second, keys.load_private_key(other.key),
                           keys.load_certificate(other.cert), replace=True)
    (entry,) = authenticode.embedded_signatures(second.read_bytes())
    assert entry.certificates()[0] == keys.load_certificate(other.cert)
    if shutil.which("sbverify"):
        assert sbverify(other.cert, second).returncode == 0
        assert sbverify(mine.cert, second).returncode != 0


def test_key_must_match_certificate(key_sets: tuple[keys.KeyPair, keys.KeyPair]) -> None:
    mine, other = key_sets
    with pytest.raises(BootkitError, match="does not belong"):
        authenticode.signed_data(bytes(32), keys.load_private_key(mine.key),
                                 keys.load_certificate(other.cert))


@needs_systemd_boot
def test_cli_sign_with_encrypted_key(
    tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = key_sets[0]
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(keys.load_private_key(mine.key).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    out = tmp_path / "out.efi"
    args = ["sign", "--key", str(encrypted), "--cert", str(mine.cert), str(SYSTEMD_BOOT), str(out)]
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "is encrypted" in result.output and not out.exists()

    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "wrong passphrase" in result.output

    monkeypatch.setenv(keys.PASSPHRASE_ENV, "s3cret")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert authenticode.embedded_signatures(out.read_bytes())

    monkeypatch.delenv(keys.PASSPHRASE_ENV)
    passfile = tmp_path / "pass"
    passfile.write_text("s3cret\n")
    out.unlink()
    result = CliRunner().invoke(main, [*args[:1], "--passphrase-file", str(passfile), *args[1:]])
    assert result.exit_code == 0, result.output
    if shutil.which("sbverify"):
        assert sbverify(mine.cert, out).returncode == 0


def test_not_a_pe_image(tmp_path: Path, key_sets: tuple[keys.KeyPair, keys.KeyPair]) -> None:
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"MZ" + bytes(200))
    with pytest.raises(BootkitError, match="not a PE image"):
        sign(key_sets[0], junk, tmp_path / "out.efi")


@pytest.mark.parametrize(("value", "encoded"), [
    (0, "020100"), (127, "02017f"), (128, "02020080"), (256, "02020100"), (-1, "0201ff"),
])
def test_der_integer(value: int, encoded: str) -> None:
    assert der.integer(value).hex() == encoded


def test_der_oid_round_trip_and_long_lengths() -> None:
    encoded = der.oid(authenticode.SPC_INDIRECT_DATA_OBJID)
    assert encoded.hex() == "060a2b060104018237020104"
    assert der.parse(encoded).oid() == authenticode.SPC_INDIRECT_DATA_OBJID
    big = der.octet_string(bytes(300))
    assert big[:4].hex() == "0482012c"
    assert der.parse(big).content == bytes(300)
    assert der.set_of(b"\x05\x00", b"\x02\x01\x00") == bytes.fromhex("3105020100" + "0500")


def test_non_rsa_keys_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(BootkitError, match="not an RSA key"):
        keys.load_private_key(path)
