"""Where things are on the physical root, with no reading of what is recorded there.

    /bootkit/config.json                    what `bootkit init` decided
    /bootkit/state.json                     the deployments and the default
    /bootkit/objects/                       files stored once (see `store`)
    /bootkit/oci/                           OS images: one OCI layout, imported layers
    /bootkit/deploy/<os>/var/               the /var every deployment of <os> shares
    /bootkit/deploy/<os>/deploy/<id>/       one deployment's tree
    /bootkit/deploy/<os>/deploy/<id>.json   its metadata
    /bootkit/damaged/                       records `bootkit fsck --repair` replaced, kept

Changing any of it goes through `bootkit.sysroot.transaction`, under `locked()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bootkit.contract import check_name
from bootkit.records.deployment import Deployment
from bootkit.sysroot.store import ObjectStore

# The OCI modules are loaded when images are looked at, not by every command.
if TYPE_CHECKING:
    from bootkit.oci.layout import ImageLayout


class SysrootPaths:
    """Where things are on a physical root that holds /bootkit; nothing is read here."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.meta = self.path / "bootkit"

    # --- where things are -------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.meta / "config.json"

    @property
    def state_path(self) -> Path:
        return self.meta / "state.json"

    @property
    def tmp(self) -> Path:
        """Scratch space on the sysroot's filesystem, for files built during a command."""
        return self.meta / "tmp"

    def stateroot(self, os_name: str) -> Path:
        return self.meta / "deploy" / check_name(os_name, "os")

    # One Path made from one string: a menu of many deployments asks for each one's
    # paths, and joining component by component costs more than what is then read.
    def deployment_dir(self, os_name: str, dep_id: str) -> Path:
        check_name(os_name, "os")
        return Path(f"{self.meta}/deploy/{os_name}/deploy/{check_name(dep_id, 'deployment')}")

    def metadata_path(self, os_name: str, dep_id: str) -> Path:
        check_name(os_name, "os")
        return Path(f"{self.meta}/deploy/{os_name}/deploy/{check_name(dep_id, 'deployment')}.json")

    def tree(self, dep: Deployment) -> Path:
        return self.deployment_dir(dep.os, dep.id)

    @property
    def images(self) -> ImageLayout:
        """The OCI layout images are fetched into, with their imported layers."""
        from bootkit.oci.layout import ImageLayout

        return ImageLayout(self.meta / "oci")

    @property
    def downloaded_path(self) -> Path:
        """The image `upgrade --download-only` fetched for the next upgrade."""
        return self.meta / "oci" / "downloaded.json"

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.meta / "objects")

    def load(self, ref: str) -> Deployment:
        """The metadata of deployment `ref` (`<os>/<id>`)."""
        os_name, _, dep_id = ref.partition("/")
        return Deployment.load(self.metadata_path(os_name, dep_id))
