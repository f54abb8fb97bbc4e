"""What a new deployment is called in the boot menu: its title and version."""

from __future__ import annotations

from bootkit.formats import bootvalues

_OS_RELEASE_HINT = (
    "an os-release value shown in the boot menu must be one line of printable text, "
    f"at most {bootvalues.MAX_TITLE} characters for a name, {bootvalues.MAX_VERSION} for a version"
)


def release_names(
    osrel: dict[str, str],
    kver: str,
    os_name: str,
    requested_version: str | None,
    image_version: str | None,
) -> tuple[str, str]:
    """(version, title), each checked as a boot entry carries it, naming where it came from.

    The version is the one asked for, else os-release's, else the image's version
    label, else the kernel's; the title os-release's name, else the OS's.
    """
    version, origin = (
        (requested_version, "version") if requested_version
        else _from_os_release(osrel, ("VERSION_ID", "VERSION"))
        or ((image_version, "the image's version label") if image_version else None)
        or (kver, "kernel version")
    )
    title, title_origin = _from_os_release(osrel, ("PRETTY_NAME", "NAME")) or (os_name, "os")
    return (
        bootvalues.check_version(version, origin, hint=_OS_RELEASE_HINT),
        bootvalues.check_title(title, title_origin, hint=_OS_RELEASE_HINT),
    )


def _from_os_release(osrel: dict[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of `keys` that os-release sets, and what to call it in an error."""
    for key in keys:
        if osrel.get(key):
            return osrel[key], f"{key} in the tree's os-release"
    return None
