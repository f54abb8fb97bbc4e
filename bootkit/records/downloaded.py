"""`/bootkit/oci/downloaded.json`: an image `bootkit upgrade --download-only` fetched and
imported, which the next `bootkit upgrade` deploys without the network."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bootkit.base.files import atomic_write
from bootkit.errors import BootkitError
from bootkit.records.deployment import ImageOrigin
from bootkit.records.jsonfields import typed_fields

_HINT = "remove it; 'bootkit upgrade --download-only' fetches the update again"


def save(path: Path, origin: ImageOrigin) -> None:
    atomic_write(path, json.dumps(asdict(origin), indent=2) + "\n")


def load(path: Path) -> ImageOrigin | None:
    """The downloaded image, or None if there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BootkitError(f"cannot read {path}: {err.strerror}", hint=_HINT) from None
    try:
        return ImageOrigin(**typed_fields(ImageOrigin, json.loads(text), path, _HINT))
    except (ValueError, TypeError) as err:
        raise BootkitError(f"cannot read {path}: {err}", hint=_HINT) from None
    except BootkitError as err:
        raise BootkitError(f"{path}: {err.message}", hint=_HINT) from None
