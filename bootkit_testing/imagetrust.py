"""Image signatures for the tests: a throwaway GPG key and the files skopeo checks with.

An ImageTrust makes, in its work directory:
  gnupg/             GNUPGHOME holding the key (no passphrase), what signing needs
  key.asc            the public key
  policy.json        a containers-policy.json(5) that accepts images of the registry
                     only when signed by that key, and anything else not at all
                     (local oci: layouts excepted, which it accepts unchecked)
  registries.d/      where signatures of the registry's images are kept: lookaside/
  lookaside/         the signatures, as files (skopeo writes and reads them there)

The key is ed25519: made at once, where an RSA key costs entropy and time, and the
gpgme that Debian's skopeo verifies with takes it. Generating or using the key starts
a gpg-agent for the GNUPGHOME; close() ends it, so tests leave no process behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from bootkit.base import process
from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError

# The agent's sockets live in GNUPGHOME, and a socket path is limited to 107 bytes.
_MAX_GNUPGHOME = 80


class ImageTrust:
    """A signing key and a policy that trusts it (only it) for `registry_host`.

    `lookaside` and `registries_d` given: signatures go to (and are looked up in) that
    other trust's store, as other_key() does, so a wrong key is told apart from a
    missing signature.
    """

    def __init__(
        self, workdir: Path, registry_host: str, *, name: str = "bootkit test",
        lookaside: Path | None = None, registries_d: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.registry_host = registry_host
        self.public_key = workdir / "key.asc"
        self.policy = workdir / "policy.json"
        self.lookaside = lookaside or workdir / "lookaside"
        self.registries_d = registries_d or workdir / "registries.d"
        self._name = name
        self._others: list[ImageTrust] = []
        self._short_home: Path | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.gnupghome = self._make_gnupghome()
        try:
            self.fingerprint = self._make_key()
            atomic_write(self.public_key, self._gpg("--armor", "--export", self.fingerprint))
            atomic_write(self.policy, json.dumps(self.policy_data(), indent=2) + "\n")
            if registries_d is None:
                self._write_registries_d()
        except BaseException:
            self.close()
            raise

    def policy_data(self) -> dict[str, Any]:
        """The policy as written to `policy`, to derive variants from."""
        return {
            "default": [{"type": "reject"}],
            "transports": {
                "docker": {
                    self.registry_host: [{
                        "type": "signedBy", "keyType": "GPGKeys",
                        "keyPath": str(self.public_key),
                    }],
                },
                # A local layout carries no signature: accepting it is the policy
                # bootkit must refuse to deploy from without --unverified.
                "oci": {"": [{"type": "insecureAcceptAnything"}]},
                "oci-archive": {"": [{"type": "insecureAcceptAnything"}]},
            },
        }

    @property
    def env(self) -> dict[str, str]:
        """What a signing skopeo needs on top of its environment."""
        return {"GNUPGHOME": str(self.gnupghome)}

    def other_key(self) -> ImageTrust:
        """An independent key, and a policy trusting only it, for the same registry and
        the same signature store: for the wrong-key tests. Closed with this one."""
        other = ImageTrust(
            self.workdir / f"other-{len(self._others) + 1}", self.registry_host,
            name=f"{self._name} (other key {len(self._others) + 1})",
            lookaside=self.lookaside, registries_d=self.registries_d,
        )
        self._others.append(other)
        return other

    def close(self) -> None:
        """End the gpg-agents of this trust and of its other keys."""
        for other in self._others:
            other.close()
        with contextlib.suppress(BootkitError):
            process.run(["gpgconf", "--kill", "all"], "stopping the test key's gpg-agent",
                        env=self.env)
        if self._short_home is not None:
            shutil.rmtree(self._short_home, ignore_errors=True)

    def __enter__(self) -> ImageTrust:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _make_gnupghome(self) -> Path:
        home = self.workdir / "gnupg"
        if len(str(home)) > _MAX_GNUPGHOME:
            self._short_home = Path(tempfile.mkdtemp(prefix="bootkit-gpg-"))
            home = self._short_home / "gnupg"
        home.mkdir(mode=0o700)
        home.chmod(0o700)  # gpg warns about, and may refuse, a home others can read
        return home

    def _make_key(self) -> str:
        uid = f"{self._name} <test@example.invalid>"
        self._gpg("--pinentry-mode", "loopback", "--passphrase", "",
                  "--quick-gen-key", uid, "ed25519", "sign", "never")
        for line in self._gpg("--with-colons", "--list-secret-keys").decode().splitlines():
            fields = line.split(":")
            if fields[0] == "fpr":
                return fields[9]
        raise BootkitError(f"gpg made no key in {self.gnupghome}")

    def _write_registries_d(self) -> None:
        self.lookaside.mkdir(exist_ok=True)
        self.registries_d.mkdir(exist_ok=True)
        # skopeo 1.9.3 takes these names and the older sigstore/sigstore-staging alike.
        url = json.dumps(self.lookaside.as_uri())
        atomic_write(self.registries_d / "bootkit-test.yaml", "\n".join([
            "docker:",
            f"  {json.dumps(self.registry_host)}:",
            f"    lookaside: {url}",
            f"    lookaside-staging: {url}",
            "",
        ]))

    def _gpg(self, *args: str) -> bytes:
        return process.run(["gpg", "--batch", "--no-tty", *args], "gpg with the test key",
                           env=self.env).stdout
