"""The trust policy: which scope applies, and which policies are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bootkit.errors import BootkitError
from bootkit.oci import policy as p
from bootkit.oci.policy import Verification, check_policy, effective_requirements
from bootkit.oci.reference import ImageRef

ANY = {"type": "insecureAcceptAnything"}
REJECT = {"type": "reject"}
SIGNED = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/key.gpg"}
SIGSTORE = {"type": "sigstoreSigned", "keyPath": "/etc/pki/cosign.pub"}
REF = ImageRef.parse("docker://reg.example.com:5000/ns/os:41")


def marked(n: int) -> dict[str, Any]:
    """A requirement that tells which scope it came from."""
    return {"type": "signedBy", "keyType": "GPGKeys", "keyPath": f"/k{n}"}


@pytest.mark.parametrize("scope", [
    "reg.example.com:5000/ns/os:41", "reg.example.com:5000/ns/os", "reg.example.com:5000/ns",
    "reg.example.com:5000", "*.example.com", "*.com", "",
])
def test_the_most_specific_docker_scope_wins(scope: str) -> None:
    all_scopes = ["reg.example.com:5000/ns/os:41", "reg.example.com:5000/ns/os",
                  "reg.example.com:5000/ns", "reg.example.com:5000", "*.example.com", "*.com", ""]
    chosen = all_scopes.index(scope)
    # Only this scope and the less specific ones are in the policy.
    scopes = {s: [marked(i)] for i, s in enumerate(all_scopes) if i >= chosen}
    policy = {"default": [REJECT], "transports": {"docker": scopes, "oci": {"": [ANY]}}}
    assert effective_requirements(policy, REF) == [marked(chosen)]


def test_unrelated_scopes_fall_back_to_default() -> None:
    policy = {"default": [marked(9)], "transports": {
        "docker": {"reg.example.com": [ANY], "reg.example.com:5000/ns/os:42": [ANY],
                   "reg.example.com:5000/n": [ANY], "*.reg.example.com": [ANY]},
        "docker-daemon": {"": [ANY]}}}
    assert effective_requirements(policy, REF) == [marked(9)]
    assert effective_requirements({"default": [REJECT]}, REF) == [REJECT]


def test_layout_scopes_are_paths(tmp_path: Path) -> None:
    layout = tmp_path / "images"
    policy = {"default": [REJECT], "transports": {
        "oci": {str(tmp_path): [marked(1)], "/elsewhere": [ANY]},
        "oci-archive": {"": [marked(2)]}}}
    assert effective_requirements(policy, ImageRef.parse(f"oci:{layout}:v1")) == [marked(1)]
    archive = ImageRef.parse(f"oci-archive:{tmp_path}/os.tar")
    assert effective_requirements(policy, archive) == [marked(2)]


def write(tmp_path: Path, policy: Any) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
    return path


@pytest.mark.parametrize("requirements", [[SIGNED], [SIGSTORE], [ANY, SIGNED], [REJECT]])
def test_a_policy_that_checks_is_verified(tmp_path: Path, requirements: list[Any]) -> None:
    path = write(tmp_path, {"default": [ANY], "transports": {"docker": {
        "reg.example.com:5000/ns": requirements}}})
    assert check_policy(REF, path, unverified=False) == Verification(True, str(path))


def test_a_policy_that_accepts_anything_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"default": [SIGNED], "transports": {"docker": {
        "reg.example.com:5000": [ANY, ANY]}}})
    with pytest.raises(BootkitError, match=r"accepts docker://reg\.example\.com:5000/ns/os:41 "
                                           r"without any signature") as err:
        check_policy(REF, path, unverified=False)
    assert err.value.hint and "--unverified" in err.value.hint
    assert check_policy(REF, path, unverified=True) == Verification(False, str(path))


def test_missing_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "DEFAULT_POLICY", tmp_path / "none.json")
    with pytest.raises(BootkitError, match=r"no trust policy at .*none\.json") as err:
        check_policy(REF, None, unverified=False)
    assert err.value.hint and "--policy" in err.value.hint
    with pytest.raises(BootkitError, match="no trust policy"):
        check_policy(REF, tmp_path / "given.json", unverified=False)
    # skopeo is told to check nothing, so no file is needed and none is recorded.
    assert check_policy(REF, None, unverified=True) == Verification(False, "")
    assert check_policy(REF, tmp_path / "given.json", unverified=True) == Verification(False, "")


def test_default_policy_file_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"default": [SIGNED]})
    monkeypatch.setattr(p, "DEFAULT_POLICY", path)
    assert check_policy(REF, None, unverified=False) == Verification(True, str(path))


@pytest.mark.parametrize("policy, says", [
    ("{", "not valid JSON"),
    ('{"default": [{"type": "reject"}], "default": []}', "not valid JSON"),
    ([], "is not a JSON object"),
    ({"transports": {}}, "default is not a non-empty list"),
    ({"default": []}, "default is not a non-empty list"),
    ({"default": [SIGNED], "extra": 1}, "unknown keys ['extra']"),
    ({"default": [{"type": "trustMe"}]}, "unknown type 'trustMe'"),
    ({"default": ["reject"]}, "without a type"),
    ({"default": [{"type": 1}]}, "unknown type '1'"),
    ({"default": [SIGNED], "transports": []}, "transports is not an object"),
    ({"default": [SIGNED], "transports": {"docker": []}}, "transports.docker is not"),
    ({"default": [SIGNED], "transports": {"docker": {"q.io": {}}}}, "'q.io' is not a non-empty"),
    ({"default": [SIGNED], "transports": {"oci": {"": [{}]}}}, "without a type"),
    ("[" * 50000, "not valid JSON"),
    (" " * (1 << 20) + "{}", "larger than"),
])
def test_invalid_policies_are_refused(tmp_path: Path, policy: Any, says: str) -> None:
    path = write(tmp_path, policy)
    with pytest.raises(BootkitError) as err:
        check_policy(REF, path, unverified=False)
    assert says in err.value.message and str(path) in err.value.message
    assert err.value.hint


def test_a_policy_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BootkitError, match="not a regular file"):
        check_policy(REF, fifo, unverified=False)
    with pytest.raises(BootkitError, match="not a regular file"):
        check_policy(REF, tmp_path, unverified=False)
