"""Which signatures an image needs, as the containers trust policy says.

skopeo enforces the policy when it copies; bootkit reads it first, the way
containers-policy.json(5) defines the lookup, for two reasons: to refuse a policy
that would accept any image unsigned (unless the admin asked for that), and to
record whether a deployment was verified.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootkit.errors import BootkitError
from bootkit.oci.manifest import load_json
from bootkit.oci.reference import ImageRef

DEFAULT_POLICY = Path("/etc/containers/policy.json")
_MAX_POLICY = 1 << 20
_MAX_SCOPES = 10000
_ACCEPT_ANY = "insecureAcceptAnything"
# skopeo refuses a policy naming any other type; so does bootkit, with a clearer message.
_TYPES = frozenset({_ACCEPT_ANY, "reject", "signedBy", "sigstoreSigned", "signedBaseLayer"})
_MAN = "see containers-policy.json(5)"


@dataclass(frozen=True)
class Verification:
    verified: bool  # the effective requirements are more than insecureAcceptAnything
    policy: str     # the policy file's path; "" when none was read


def effective_requirements(policy: Mapping[str, Any], ref: ImageRef) -> list[Mapping[str, Any]]:
    """The requirements that apply to `ref`: those of the most specific scope of its
    transport that the policy names, else of the transport's "" scope, else "default"."""
    transports = policy.get("transports") or {}
    scopes = transports.get(str(ref.transport)) or {}
    for scope in [*ref.policy_scopes(), ""]:
        if scope in scopes:
            return _requirements(scopes[scope], f"transports.{ref.transport}.{scope!r}")
    return _requirements(policy.get("default"), "default")


def check_policy(ref: ImageRef, policy_file: Path | None, unverified: bool) -> Verification:
    """How `ref` will be checked; BootkitError for a policy that checks nothing.

    With `unverified` the caller has skopeo skip the policy, so the file is not read.
    """
    path = policy_file or DEFAULT_POLICY
    if unverified:
        return Verification(False, str(path) if path.exists() else "")
    requirements = effective_requirements(read_policy(path), ref)
    if all(r["type"] == _ACCEPT_ANY for r in requirements):
        raise BootkitError(
            f"the trust policy {path} accepts {ref} without any signature",
            hint="add a signedBy or sigstoreSigned requirement for the image's scope "
                 f"({_MAN}), or deploy with --unverified to accept it unsigned",
        )
    return Verification(True, str(path))


def read_policy(path: Path) -> dict[str, Any]:
    """The policy in `path`, its structure checked as skopeo checks it."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise BootkitError(f"the trust policy {path} is not a regular file",
                               hint=f"point --policy at a policy.json ({_MAN})")
        with open(path, "rb") as f:
            raw = f.read(_MAX_POLICY + 1)
    except FileNotFoundError:
        raise BootkitError(
            f"there is no trust policy at {path}",
            hint=f"write one that names the keys images must be signed with ({_MAN}), "
                 "pass --policy FILE, or deploy with --unverified",
        ) from None
    policy = load_json(raw, f"the trust policy {path}", _MAX_POLICY)
    _check_policy(policy, path)
    return policy  # type: ignore[no-any-return]


def _check_policy(policy: Any, path: Path) -> None:
    where = f"the trust policy {path}"
    if not isinstance(policy, dict):
        raise _bad(where, "is not a JSON object")
    unknown = set(policy) - {"default", "transports"}
    if unknown:
        raise _bad(where, f"has unknown keys {sorted(unknown)[:5]}")
    _requirements(policy.get("default"), f"{where}: default")
    transports = policy.get("transports", {})
    if not isinstance(transports, dict):
        raise _bad(where, "transports is not an object")
    for transport, scopes in transports.items():
        if not isinstance(scopes, dict) or len(scopes) > _MAX_SCOPES:
            raise _bad(where, f"transports.{transport[:50]} is not an object of scopes")
        for scope, requirements in scopes.items():
            _requirements(requirements, f"{where}: transports.{transport[:50]}.{scope[:200]!r}")


def _requirements(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad(where, "is not a non-empty list of requirements")
    for requirement in value:
        kind = requirement.get("type") if isinstance(requirement, dict) else None
        if kind is None:
            raise _bad(where, "holds a requirement without a type")
        if kind not in _TYPES:
            raise _bad(where, f"holds a requirement of unknown type {str(kind)[:50]!r}")
    return value


def _bad(where: str, problem: str) -> BootkitError:
    return BootkitError(f"{where} {problem}", hint=f"fix the policy file ({_MAN})")
