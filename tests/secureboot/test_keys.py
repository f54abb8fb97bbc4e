from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bootkit.cli import main
from bootkit.errors import BootkitError
from bootkit.formats import efivarstore, esl
from bootkit.secureboot import keys

from bootkit_testing import secureboot as snakeoil

needs_snakeoil = pytest.mark.skipif(
    not (snakeoil.SNAKEOIL_VARS.is_file() and snakeoil.SNAKEOIL_CERT.is_file()),
    reason="Debian's ovmf package (snakeoil vars and certificate) is not installed",
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, keys.KeyPair]]:
    directory = tmp_path_factory.mktemp("keys") / "set"
    return directory, keys.create_key_set(directory, "Example Corp")


def test_key_set_files(key_dir: tuple[Path, dict[str, keys.KeyPair]]) -> None:
    directory, pairs = key_dir
    assert list(pairs) == ["PK", "KEK", "db"]
    owner = uuid.UUID((directory / "GUID").read_text().strip())
    public_keys = set()
    for role, pair in pairs.items():
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
        key = keys.load_private_key(pair.key)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
        cert = keys.load_certificate(pair.cert)
        assert keys.load_certificate(pair.cer) == cert  # DER and PEM hold the same certificate
        assert pair.cer.read_bytes()[:1] == b"\x30" and pair.cert.read_bytes().startswith(b"-----")
        assert cert.subject == cert.issuer
        assert cert.subject.rfc4514_string() == f"CN=Example Corp {role}"
        cert.verify_directly_issued_by(cert)  # self-signed, and the signature is valid
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        public_keys.add(cert.public_key().public_numbers().n)
        (entry,) = esl.signature_lists(pair.esl.read_bytes())
        assert uuid.UUID(bytes_le=entry.signatures[0].owner) == owner
        assert keys.x509_in_signature_database(pair.esl.read_bytes()) == [cert]
    assert len(public_keys) == 3


def test_refuses_to_overwrite_keys(key_dir: tuple[Path, dict[str, keys.KeyPair]]) -> None:
    directory, pairs = key_dir
    before = pairs["db"].key.read_bytes()
    with pytest.raises(BootkitError, match="already holds keys"):
        keys.create_key_set(directory)
    assert pairs["db"].key.read_bytes() == before


def test_unsupported_key_size(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match="unsupported key size"):
        keys.create_key_set(tmp_path, bits=1024)
    assert not list(tmp_path.iterdir())


def test_signature_list_holds_several_certificates(
    key_dir: tuple[Path, dict[str, keys.KeyPair]]
) -> None:
    certs = [keys.load_certificate(p.cert) for p in key_dir[1].values()]
    data = keys.signature_list(certs, uuid.UUID(int=7))
    assert keys.x509_in_signature_database(data) == certs
    lists = esl.signature_lists(data)
    # One list per certificate: a list's entries all have the same size.
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    assert [e.list_size for e in lists] == [28 + 16 + len(d) for d in ders]
    assert [e.signatures[0].data for e in lists] == ders
    assert sum(e.list_size for e in lists) == len(data)


def test_cli_keys_create(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "create", str(tmp_path / "k"), "--name", "cli",
                                       "--json"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)
    assert set(files) == {"PK", "KEK", "db"}
    assert all(Path(p).is_file() for entry in files.values() for p in entry.values())
    again = CliRunner().invoke(main, ["keys", "create", str(tmp_path / "k")])
    assert again.exit_code == 1 and "already holds keys" in again.output


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    assert keys.read_passphrase(None) is None
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from-env")
    assert keys.read_passphrase(None) == b"from-env"
    file = tmp_path / "pass"
    file.write_bytes(b"from-file\nignored\n")
    assert keys.read_passphrase(file) == b"from-file"


@needs_snakeoil
def test_snakeoil_key_decrypts_and_matches_its_certificate() -> None:
    key = keys.load_private_key(snakeoil.SNAKEOIL_KEY, snakeoil.SNAKEOIL_PASSPHRASE)
    cert = keys.load_certificate(snakeoil.SNAKEOIL_CERT)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    with pytest.raises(BootkitError, match="encrypted"):
        keys.load_private_key(snakeoil.SNAKEOIL_KEY)


@needs_snakeoil
def test_snakeoil_certificate_is_enrolled_in_the_snakeoil_vars() -> None:
    cert = keys.load_certificate(snakeoil.SNAKEOIL_CERT)
    variables = {v.name: v for v in efivarstore.read_variables_file(snakeoil.SNAKEOIL_VARS)}
    db = variables["db"]
    assert db.vendor == keys.EFI_IMAGE_SECURITY_DATABASE_GUID
    assert keys.x509_in_signature_database(db.data) == [cert]
    assert keys.x509_in_signature_database(variables["KEK"].data) == [cert]
    assert variables["PK"].vendor == keys.EFI_GLOBAL_VARIABLE_GUID
    assert keys.x509_in_signature_database(variables["PK"].data) == [cert]


def test_blank_vars_have_no_platform_key() -> None:
    if not keys.BLANK_VARS.is_file():
        pytest.skip(f"{keys.BLANK_VARS} is not installed")
    names = {v.name for v in efivarstore.read_variables_file(keys.BLANK_VARS)}
    assert not names & {"PK", "KEK", "db"}


@needs_snakeoil
def test_make_secure_boot_vars_and_cli_show(tmp_path: Path) -> None:
    out = snakeoil.make_secure_boot_vars(tmp_path / "vars.fd")
    assert out.read_bytes() == snakeoil.SNAKEOIL_VARS.read_bytes()
    result = CliRunner().invoke(main, ["keys", "show", "--json", str(out)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    fingerprint = keys.load_certificate(snakeoil.SNAKEOIL_CERT).fingerprint(
        hashes.SHA256()).hex()
    assert [c["sha256"] for c in shown["db"]] == [fingerprint]


def test_not_a_vars_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fd"
    junk.write_bytes(bytes(4096))
    with pytest.raises(BootkitError, match="not an OVMF vars image"):
        efivarstore.read_variables_file(junk)


def _store_image(tmp_path: Path) -> bytes:
    """A minimal, empty authenticated variable store inside a firmware volume."""
    size = 0x4000
    volume = efivarstore.FirmwareVolumeHeader.build({
        "zero_vector": bytes(16), "file_system_guid": bytes(16), "length": size,
        "attributes": 0, "header_length": 72, "checksum": 0, "ext_header_offset": 0,
        "reserved": 0, "revision": 2,
    })
    store = efivarstore.VariableStoreHeader.build({
        "signature": efivarstore.AUTHENTICATED_VARIABLE_GUID.bytes_le, "size": size - 72,
        "format": 0x5A, "state": 0xFE, "reserved": 0, "reserved1": 0,
    })
    head = volume.ljust(72, b"\0") + store
    return head + b"\xff" * (size - len(head))


def test_set_variables_round_trip_and_replace(tmp_path: Path) -> None:
    image = _store_image(tmp_path)
    vendor = uuid.UUID(int=1)
    first = efivarstore.set_variables(image, [
        efivarstore.Variable("Odd", vendor, 0x7, b"abc"),  # 3 bytes: next record is aligned
        efivarstore.Variable("db", keys.EFI_IMAGE_SECURITY_DATABASE_GUID,
                             keys.KEY_VARIABLE_ATTRIBUTES, b"old"),
    ])
    second = efivarstore.set_variables(first, [
        efivarstore.Variable("db", keys.EFI_IMAGE_SECURITY_DATABASE_GUID,
                             keys.KEY_VARIABLE_ATTRIBUTES, b"new-data"),
    ])
    live = efivarstore.read_variables(second)
    assert [(v.name, v.data) for v in live] == [("Odd", b"abc"), ("db", b"new-data")]
    assert len(second) == len(image)
    with pytest.raises(BootkitError, match="no room"):
        efivarstore.set_variables(second, [efivarstore.Variable("big", vendor, 7, bytes(0x4000))])


@needs_snakeoil
@pytest.mark.parametrize("template", [keys.BLANK_VARS, snakeoil.SNAKEOIL_VARS], ids=["blank", "snakeoil"])
def test_enroll_own_keys(tmp_path: Path, key_dir: tuple[Path, dict[str, keys.KeyPair]],
                         template: Path) -> None:
    directory, pairs = key_dir
    out = tmp_path / "vars.fd"
    result = CliRunner().invoke(main, ["keys", "enroll", str(directory), "-o", str(out),
                                       "--template", str(template)])
    assert result.exit_code == 0, result.output
    variables = {v.name: v for v in efivarstore.read_variables_file(out)}
    for role, pair in pairs.items():
        assert keys.x509_in_signature_database(variables[role].data) == [
            keys.load_certificate(pair.cert)]
        assert variables[role].attributes == keys.KEY_VARIABLE_ATTRIBUTES
    # Keys the template had are replaced, everything else is kept.
    before = {v.name for v in efivarstore.read_variables_file(template)}
    assert set(variables) == before | {"PK", "KEK", "db"}
    assert len(efivarstore.read_variables_file(out)) == len(variables)  # no duplicates
    assert out.stat().st_size == template.stat().st_size


def _empty_vars_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.fd"
    path.write_bytes(_store_image(tmp_path))
    return path


def test_enrolled_certificates_name_each_role(
    tmp_path: Path, key_dir: tuple[Path, dict[str, keys.KeyPair]]
) -> None:
    empty = _empty_vars_file(tmp_path)
    assert keys.enrolled_certificates(empty) == {}
    pairs = key_dir[1]
    out = keys.enroll_keys(tmp_path / "vars.fd", pairs["PK"].cert, [pairs["KEK"].cert],
                           [pairs["db"].cert], template=empty)
    found = keys.enrolled_certificates(out)
    assert list(found) == ["PK", "KEK", "db"]
    for role, pair in pairs.items():
        fingerprint = keys.load_certificate(pair.cert).fingerprint(hashes.SHA256()).hex()
        assert found[role] == [keys.EnrolledCertificate(f"CN=Example Corp {role}", fingerprint)]


def test_cli_keys_show_prints_what_is_enrolled(
    tmp_path: Path, key_dir: tuple[Path, dict[str, keys.KeyPair]]
) -> None:
    empty = _empty_vars_file(tmp_path)
    result = CliRunner().invoke(main, ["keys", "show", str(empty)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["PK: (not set)", "KEK: (not set)", "db: (not set)"]
    pairs = key_dir[1]
    out = keys.enroll_keys(tmp_path / "vars.fd", pairs["PK"].cert, [pairs["KEK"].cert],
                           [pairs["db"].cert], template=empty)
    result = CliRunner().invoke(main, ["keys", "show", str(out)])
    assert result.exit_code == 0, result.output
    db = keys.load_certificate(pairs["db"].cert).fingerprint(hashes.SHA256()).hex()
    lines = result.output.splitlines()
    assert lines[lines.index("db:") + 1] == f"  CN=Example Corp db  sha256:{db}"


def test_a_malformed_certificate_is_named_with_its_variable(tmp_path: Path) -> None:
    junk = esl.x509_list(b"not a certificate", uuid.UUID(int=3))
    path = tmp_path / "vars.fd"
    path.write_bytes(efivarstore.set_variables(_store_image(tmp_path), [
        efivarstore.Variable("db", keys.EFI_IMAGE_SECURITY_DATABASE_GUID,
                             keys.KEY_VARIABLE_ATTRIBUTES, junk),
    ]))
    with pytest.raises(BootkitError, match="malformed db variable"):
        keys.enrolled_certificates(path)
    result = CliRunner().invoke(main, ["keys", "show", str(path)])
    assert result.exit_code == 1 and "malformed db variable" in result.output


def test_only_x509_signatures_are_read_as_certificates(
    key_dir: tuple[Path, dict[str, keys.KeyPair]]
) -> None:
    cert = keys.load_certificate(key_dir[1]["db"].cert)
    sha256_type = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")  # EFI_CERT_SHA256_GUID
    hashes_list = esl.SignatureList.build({
        "signature_type": sha256_type.bytes_le, "list_size": esl.LIST_HEADER_SIZE + 2 * 48,
        "header_size": 0, "signature_size": 48, "header": b"",
        "signatures": [{"owner": bytes(16), "data": bytes(32)},
                       {"owner": bytes(16), "data": b"\x01" * 32}],
    })
    data = hashes_list + keys.signature_list([cert], uuid.UUID(int=5))
    found = esl.signatures(data)
    assert [s.signature_type for s in found] == [sha256_type, sha256_type, esl.EFI_CERT_X509_GUID]
    assert [s.data for s in found[:2]] == [bytes(32), b"\x01" * 32]
    assert found[2].owner == uuid.UUID(int=5)
    assert keys.x509_in_signature_database(data) == [cert]
