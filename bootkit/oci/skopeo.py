"""skopeo, which fetches images and checks their signatures for bootkit.

skopeo knows the registry protocols, credentials, mirrors and the signature
formats of the containers tools, so bootkit leaves all of that to it and reads
only what it writes: a manifest on stdout, or blobs in an OCI layout.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bootkit.base import process
from bootkit.errors import BootkitError
from bootkit.oci.manifest import MAX_JSON
from bootkit.oci.reference import ImageRef, Transport

# skopeo copy --quiet writes nothing to stdout; this only bounds a surprise.
_MAX_COPY_OUTPUT = 1 << 20
_STDERR_LINES = 3
# skopeo's own log lines: time="..." level=fatal msg="...".
_LOG_LINE = re.compile(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"')
_UNREACHABLE = "the registry cannot be reached: check the network and the host name"
# What skopeo's message says -> what the admin can do, most telling first.
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("rejected by policy",),
     "the trust policy rejects this image (a reject requirement for its scope)"),
    (("source image rejected", "signature"),
     "the image is not signed by a key the policy trusts: check the policy's signedBy or "
     "sigstoreSigned requirement for it and where registries.d says signatures are kept"),
    (("permission denied", "operation not permitted"), "run bootkit as root"),
    (("unauthorized", "authentication required", "requested access to the resource is denied"),
     "log in to the registry (skopeo login) or check its credentials"),
    (("manifest unknown", "name unknown", "not found", "no such file or directory"),
     "check the image's name and tag"),
    (("server gave http response to https client",),
     f"{_UNREACHABLE}; a registry without TLS must be marked insecure in registries.conf"),
    (("x509:", "tls:", "certificate"),
     "the registry's TLS certificate is not trusted: install its CA certificate"),
    (("dial tcp", "connection refused", "no such host", "i/o timeout", "network is unreachable",
      "timeout", "connection reset"),
     _UNREACHABLE),
    (("preserve digests",),
     "the image would have to be converted to be stored unchanged in an OCI layout; "
     "push it as an OCI image"),
    (("no space left",), "free some space ('bootkit cleanup'), then try again"),
)


@dataclass(frozen=True)
class Trust:
    """How skopeo checks signatures; None means skopeo's default file or directory."""

    policy: Path | None
    registries_d: Path | None
    insecure: bool = False  # --insecure-policy: no check at all (the admin's --unverified)


def inspect_raw(ref: ImageRef, *, config: bool = False) -> bytes:
    """The image's manifest (or index) as the source holds it, or with `config` its
    config; at most MAX_JSON bytes."""
    argv = ["skopeo", "inspect", "--raw", *(["--config"] if config else []), ref.skopeo_name()]
    what = f"reading the {'config' if config else 'manifest'} of {ref}"
    result = process.run_bounded(argv, what, limit=MAX_JSON)
    if result.returncode != 0:
        raise _failure(what, result.stderr, result.returncode)
    return result.stdout


def copy(
    ref: ImageRef, layout: Path, ref_name: str, trust: Trust, progress: Callable[[int], None]
) -> None:
    """Copy the image into the OCI layout at `layout`, under the name `ref_name`.

    Digests are kept, so the manifest in the layout is the one the source signed.
    Blobs already in the layout are not fetched again. `progress` gets the bytes
    written into the layout as they land (checked about every 0.2 s).
    """
    try:
        dest = ImageRef(Transport.OCI, os.path.abspath(layout), ref_name, None)
    except BootkitError as err:
        raise BootkitError(f"cannot copy into {layout} as {ref_name!r}: {err.message}") from None
    options = [
        *(["--policy", str(trust.policy)] if trust.policy else []),
        *(["--registries.d", str(trust.registries_d)] if trust.registries_d else []),
        *(["--insecure-policy"] if trust.insecure else []),
    ]
    # A registry's connection may drop in the middle of a large layer; the blobs
    # that did land are reused by the retry. A local source has nothing to retry.
    retry = ["--retry-times", "2"] if ref.transport is Transport.DOCKER else []
    # The policy is enforced on the source's signatures as they are read; an OCI layout
    # cannot store them, and skopeo refuses to copy a signed image there unless told
    # to leave them behind.
    argv = ["skopeo", *options, "copy", "--quiet", "--preserve-digests", "--remove-signatures",
            *retry, ref.skopeo_name(), dest.skopeo_name()]
    what = f"copying {ref}"
    meter = _Landing(layout, progress)
    result = process.run_bounded(argv, what, limit=_MAX_COPY_OUTPUT, tick=meter.poll)
    if result.returncode != 0:
        raise _failure(what, result.stderr, result.returncode)
    meter.poll()


# Files skopeo writes at a layout's top that are no blob on the way.
_NOT_BLOBS = frozenset({"index.json", "oci-layout"})


class _Landing:
    """The bytes skopeo has written into a layout: blobs that were not there when it
    started, and the temp files it writes them to first (oci-put-blob* at the top,
    in skopeo 1.9; any new file there but the layout's own is taken for one)."""

    def __init__(self, layout: Path, progress: Callable[[int], None]) -> None:
        self.dirs = (layout / "blobs" / "sha256", layout)
        self.before = [set(_files(d)) for d in self.dirs]
        self.progress = progress
        self.reported = 0

    def poll(self) -> None:
        # Blobs before temp files: a temp file renamed in between is missed this
        # time and counted at the next poll, never counted twice.
        landed = sum(size for d, before in zip(self.dirs, self.before, strict=True)
                     for name, size in _files(d).items()
                     if name not in before and name not in _NOT_BLOBS)
        if landed > self.reported:
            self.progress(landed - self.reported)
            self.reported = landed


def _files(directory: Path) -> dict[str, int]:
    """Regular files in `directory` and their sizes; nothing if it is not there (yet)."""
    sizes = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # renamed or removed while listed
                if stat.S_ISREG(st.st_mode):
                    sizes[entry.name] = st.st_size
    except FileNotFoundError:
        pass
    return sizes


def _failure(what: str, stderr: bytes, returncode: int) -> BootkitError:
    """skopeo's last lines of stderr, and a hint chosen by what they say."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    shown = [_message(line) for line in lines[-_STDERR_LINES:]]
    reason = "; ".join(shown) if shown else f"skopeo exit status {returncode}"
    if len(reason) > 1000:
        reason = reason[:1000] + "..."
    text = " ".join(shown).lower()
    hint = next((h for keys, h in _HINTS if any(k in text for k in keys)),
                "check the image reference and skopeo's message")
    return BootkitError(f"{what} failed: {reason}", hint=hint)


def _message(line: str) -> str:
    match = _LOG_LINE.search(line)
    if match is None:
        return line
    return re.sub(r"\\(.)", r"\1", match.group(1))
