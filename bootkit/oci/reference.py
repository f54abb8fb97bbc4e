"""Where an image comes from: a registry (docker://), an OCI layout (oci:) or an
archive of one (oci-archive:), written the way skopeo takes it.

A reference is recorded in the deployment and shown to the admin, and a pinned one
is passed back to skopeo, so every part is checked against the grammar skopeo
itself applies, and anything unusual (whitespace, control characters, very long
names) is refused rather than carried along.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum

from bootkit.errors import BootkitError
from bootkit.oci.manifest import check_digest


class Transport(StrEnum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"


_FORMS = ("write docker://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST], oci:DIR[:TAG] "
          "or oci-archive:FILE[:TAG]")
_MAX_TEXT = 4096 + 300
_MAX_NAME = 255  # what registries accept for a repository name with its host
_MAX_PATH = 4096
_MAX_REF_NAME = 255

# The Docker distribution grammar, which registries and skopeo enforce.
_HOST_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?")
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# An OCI layout's ref name as skopeo accepts it, less '@': a name holding '@' would
# read like a digest to a person, and skopeo 1.9 cannot address a layout by digest.
_REF_PART = r"[A-Za-z0-9]+(?:(?:[-._:+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_PART}(?:/{_REF_PART})*")


@dataclass(frozen=True)
class ImageRef:
    """One image: `name` is "host[:port]/path" for docker and an absolute path for
    the other transports; a docker reference has a tag or a digest, never both."""

    transport: Transport
    name: str
    tag: str | None
    digest: str | None

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """The reference `text` means; BootkitError naming what is wrong with it."""
        try:
            return _parse(text)
        except BootkitError as err:
            shown = text if len(text) <= 200 else text[:200] + "..."
            raise BootkitError(f"bad image reference {shown!r}: {err.message}",
                               hint=_FORMS) from None

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
            return f"docker://{self.name}{suffix}"
        return f"{self.transport}:{self.name}" + (f":{self.tag}" if self.tag else "")

    def skopeo_name(self) -> str:
        """The reference as skopeo's command line takes it (the canonical text)."""
        return str(self)

    def pinned(self, digest: str) -> ImageRef:
        """This image at exactly `digest`.

        skopeo 1.9 cannot address an image in a layout or archive by digest, so such a
        reference stays as it is: the caller compares the digest after copying.
        """
        check_digest(digest, "pinned digest")
        if self.transport is not Transport.DOCKER:
            return self
        return ImageRef(self.transport, self.name, None, digest)

    def policy_scopes(self) -> list[str]:
        """The containers-policy.json(5) scopes that may apply, most specific first;
        the transport's "" scope and "default" come after these, as the caller applies."""
        if self.transport is Transport.DOCKER:
            return _docker_scopes(self)
        # skopeo looks layouts and archives up by their path with symlinks resolved.
        path = os.path.realpath(self.name)
        scopes = []
        while path not in ("/", ""):
            scopes.append(path)
            path = os.path.dirname(path)
        return scopes


def is_image_reference(text: str) -> bool:
    """Whether `text` names an image (rather than a directory or tar archive)."""
    return text.startswith(("docker://", "oci:", "oci-archive:"))


def _docker_scopes(ref: ImageRef) -> list[str]:
    identity = f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"
    scopes = [identity]
    name = ref.name
    while True:  # the repository, each namespace above it, then the host with its port
        scopes.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    # Wildcard scopes name the subdomains of a host, never with a port.
    host = name.split(":", 1)[0]
    while "." in host:
        host = host.split(".", 1)[1]
        scopes.append(f"*.{host}")
    return scopes


def _parse(text: str) -> ImageRef:
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        raise BootkitError("too long")
    _check_characters(text)
    if text.startswith("docker://"):
        return _parse_docker(text.removeprefix("docker://"))
    for transport in (Transport.OCI_ARCHIVE, Transport.OCI):
        prefix = f"{transport}:"
        if text.startswith(prefix):
            # skopeo splits at the first ':', so a path with ':' cannot be named.
            path, sep, tag = text.removeprefix(prefix).partition(":")
            if not path:
                raise BootkitError("no path")
            if sep and not tag:
                raise BootkitError("empty tag after ':'")
            return ImageRef(transport, os.path.abspath(path), tag or None, None)
    raise BootkitError("unknown transport")


def _parse_docker(rest: str) -> ImageRef:
    name, at, digest = rest.partition("@")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last and "/" in name:
        name, tag = name.rsplit(":", 1)
        if not tag:
            raise BootkitError("empty tag after ':'")
    if at:
        if tag is not None:
            raise BootkitError("a tag and a digest together (skopeo takes only one)")
        return ImageRef(Transport.DOCKER, name, None, digest)
    return ImageRef(Transport.DOCKER, name, tag or "latest", None)


def _check_characters(text: str) -> None:
    if not text.isprintable() or any(c.isspace() for c in text):
        raise BootkitError("whitespace or control characters")


def _check(ref: ImageRef) -> None:
    if not isinstance(ref.transport, Transport):
        raise BootkitError(f"unknown transport {ref.transport!r}")
    for part in (ref.name, ref.tag, ref.digest):
        if part is not None:
            _check_characters(part)
    if ref.digest is not None:
        check_digest(ref.digest, "image digest")
    if ref.transport is Transport.DOCKER:
        _check_docker(ref)
    else:
        _check_layout(ref)


def _check_docker(ref: ImageRef) -> None:
    if (ref.tag is None) == (ref.digest is None):
        raise BootkitError("a docker reference needs a tag or a digest, not both")
    host, slash, path = ref.name.partition("/")
    if not slash or not path:
        raise BootkitError("no repository name after the registry host")
    if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
        raise BootkitError(f"{host!r} is not a registry host (it needs a '.', a port, "
                           "or to be localhost: the registry is never implied)")
    if len(ref.name) > _MAX_NAME:
        raise BootkitError(f"the name is longer than {_MAX_NAME} characters")
    for part in path.split("/"):
        if not _PATH_PART.fullmatch(part):
            raise BootkitError(f"{part!r} is not a repository name component (lower-case "
                               "letters, digits and single separators . _ __ -)")
    if ref.tag is not None and not _TAG.fullmatch(ref.tag):
        raise BootkitError(f"{ref.tag!r} is not a tag (letters, digits, _ . -, at most 128)")


def _check_layout(ref: ImageRef) -> None:
    if ref.digest is not None:
        raise BootkitError(f"skopeo cannot address an {ref.transport}: image by digest")
    if not os.path.isabs(ref.name) or os.path.normpath(ref.name) != ref.name:
        raise BootkitError(f"{ref.name!r} is not a normalized absolute path")
    if ":" in ref.name:
        raise BootkitError("the path holds ':', which skopeo reads as the start of the tag")
    if len(ref.name) > _MAX_PATH:
        raise BootkitError(f"the path is longer than {_MAX_PATH} characters")
    if ref.tag is not None and (len(ref.tag) > _MAX_REF_NAME or not _REF_NAME.fullmatch(ref.tag)):
        raise BootkitError(f"{ref.tag!r} is not an image name in a layout (letters and digits "
                           "with single separators - . _ : + or --, parts joined by /)")
