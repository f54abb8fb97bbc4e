"""Small root trees, sysroots and readers of what a bootloader would see, shared by the tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from click.testing import CliRunner, Result

from bootkit import contract
from bootkit.boot import payloads
from bootkit.boot.payloads import Payload
from bootkit.cli import main
from bootkit.contract import bootkit_arg
from bootkit.formats import grubscript
from bootkit.formats.bls import (
    ENTRIES_DIR,
    BootEntry,
    EntryName,
    parse_entry,
    systemd_boot_order,
)
from bootkit.records.config import Bootloader, SysrootConfig
from bootkit.records.deployment import Deployment
from bootkit.sysroot import operations
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import status

KVER = "6.1.0-1-amd64"
REPO = Path(__file__).resolve().parents[2]


def make_tree(
    root: Path,
    *,
    kver: str = KVER,
    kernel: bytes = b"kernel image\n",
    initrd: bytes | None = b"initramfs image\n",
    version: str = "1",
    pretty: str | None = None,
    files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """A minimal root tree: a kernel (+ initramfs), os-release, /etc defaults and /var."""
    mods = root / "usr/lib/modules" / kver
    mods.mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(kernel)
    if initrd is not None:
        (mods / "initramfs.img").write_bytes(initrd)
    (root / "usr/lib/os-release").write_text(
        f'NAME="Test OS"\nPRETTY_NAME="{pretty or f"Test OS {version}"}"\nVERSION_ID={version}\n'
    )
    (root / "usr/bin").mkdir()
    (root / "usr/bin/hello").write_bytes(b"#!/bin/sh\necho hello\n")
    (root / "usr/bin/hello").chmod(0o755)
    (root / "usr/etc").mkdir()
    (root / "usr/etc/hostname").write_text("testhost\n")
    (root / "usr/etc/os-release").symlink_to("../lib/os-release")
    (root / "var/lib/app").mkdir(parents=True)
    (root / "var/lib/app/state").write_text("seed\n")
    for rel, content in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


def cli(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Result:
    """Run the bootkit CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], env=dict(env or {}))


def ok(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Result:
    result = cli(*args, env=env)
    assert result.exit_code == 0, (
        f"bootkit {' '.join(map(str, args))} failed ({result.exit_code}):\n"
        f"{result.stdout}{result.stderr}{result.exception!r}"
    )
    return result


def fails(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> str:
    """Run a command that must fail the user-facing way; return its first stderr line."""
    result = cli(*args, env=env)
    assert result.exit_code == 1, (
        f"expected exit status 1, got {result.exit_code}: {result.stdout}{result.stderr}"
        f"{result.exception!r}"
    )
    lines = result.stderr.splitlines()
    assert lines, "no message on stderr"
    assert all(line.startswith("bootkit: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def python_cli() -> list[str]:
    """argv prefix that runs the installed bootkit CLI in a fresh interpreter."""
    return [sys.executable, "-c", "import sys; from bootkit.cli import main; sys.exit(main())"]


def init_sysroot(
    path: Path, bootloader: str = "systemd-boot", os_name: str = "test", **config: Any
) -> Sysroot:
    """A new sysroot at `path` (made if missing), as `bootkit init` makes one."""
    path.mkdir(parents=True, exist_ok=True)
    settings = SysrootConfig(os=os_name, bootloader=Bootloader(bootloader), **config)
    return operations.init(Sysroot(path), settings)


def deploy_tree(sr: Sysroot, source: Path, **request: Any) -> Deployment:
    """Deploy `source` into `sr` through the library, as `bootkit deploy` does."""
    if "kargs" in request:
        request["kargs"] = tuple(request["kargs"])
    return deploy(sr, DeployRequest(Path(source), **request))


# --- what the bootloaders read -------------------------------------------------------


def bls_entries(boot: Path) -> list[tuple[str, BootEntry]]:
    """Every entry systemd-boot would load: files ending in .conf in loader/entries."""
    edir = boot / ENTRIES_DIR
    if not edir.is_dir():
        return []
    return [
        (p.name, parse_entry(p.read_text(), str(p)))
        for p in sorted(edir.iterdir())
        if p.name.endswith(".conf") and p.is_file()
    ]


def sdboot_menu(boot: Path) -> list[tuple[str, BootEntry]]:
    return systemd_boot_order(bls_entries(boot))


def grub_slot_text(boot: Path) -> str | None:
    """The slot file GRUB's stub would `source`, given the slot files that exist."""
    gdir = boot / grubscript.SLOT_DIR.lstrip("/")
    present = {i for i in range(grubscript.SLOTS) if (gdir / f"slot-{i}.cfg").is_file()}
    slot = grubscript.choose_slot(present)
    return None if slot is None else (gdir / f"slot-{slot}.cfg").read_text()


def grub_menu(boot: Path) -> list[tuple[str, str]]:
    text = grub_slot_text(boot)
    return [] if text is None else grubscript.parse_menu(text)


def grub_initrds(text: str) -> list[str]:
    """The initrd paths of a slot file, unquoted as GRUB reads them."""
    lines = re.findall(r"^\s*initrd .*$", text, re.M)
    return [shlex.split(line)[1] for line in lines]


def deployment_path(options: str) -> str:
    path = bootkit_arg(options)
    assert path, f"no bootkit= in {options!r}"
    return path


@contextlib.contextmanager
def kernel_cmdline(text: str) -> Iterator[None]:
    """Run the block as if the kernel had been started with the command line `text`."""
    with tempfile.TemporaryDirectory(prefix="bootkit-cmdline-") as tmp:
        path = Path(tmp) / "cmdline"
        path.write_text(text + "\n")
        with mock.patch.object(contract, "PROC_CMDLINE", path):
            yield


def booted(path: str) -> contextlib.AbstractContextManager[None]:
    """Run the block as if the deployment at `path` were the running system."""
    return kernel_cmdline(f"BOOT_IMAGE=/x root=LABEL=r rw bootkit={path} quiet")


def refs_of_entries(entries: list[tuple[str, BootEntry]]) -> list[str]:
    return [ref_of_path(deployment_path(e.options)) for _, e in entries]


def ref_of_path(path: str) -> str:
    # /bootkit/deploy/<os>/deploy/<id>
    parts = path.strip("/").split("/")
    return f"{parts[2]}/{parts[4]}"


def status_refs(sr: Sysroot) -> list[str]:
    return [s.deployment.ref for s in status(sr).rows]


# --- whole-sysroot checks ------------------------------------------------------------


def snapshot(root: Path, exclude: tuple[str, ...] = ("bootkit/lock",)) -> dict[str, object]:
    """Everything under `root` that a change could touch: types, modes, contents, targets."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if rel in exclude:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("f", st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = ("d", st.st_mode)
    return out


def untidy(sr: Sysroot) -> list[str]:
    """Leftovers and inconsistencies; empty when the sysroot is as a finished command leaves it."""
    problems: list[str] = []
    state = sr.state()
    cfg = sr.config
    boot = sr.boot_path
    for dirpath, dirnames, filenames in os.walk(sr.path):
        for name in dirnames + filenames:
            if name.endswith(".bootkit-tmp") or name.startswith(".staging-"):
                problems.append(f"leftover {Path(dirpath, name)}")
    view = sr.boot.view()
    if not sr.boot.is_current(view, state.generation):
        problems.append(f"$BOOT is not generation {state.generation}: {view}")
    listed = set(state.deployments)
    for osdir in (sr.meta / "deploy").iterdir():
        for p in (osdir / "deploy").iterdir():
            ref = f"{osdir.name}/{p.name.removesuffix('.json')}"
            if ref not in listed:
                problems.append(f"unlisted {p}")
    for ref in listed:
        dep = sr.load(ref)
        if not sr.deployment_dir(dep.os, dep.id).is_dir():
            problems.append(f"missing tree of {ref}")
    wanted = {Payload(d.os, d.payload) for d in sr.deployments(state)}
    present = set(payloads.present(boot))
    if present != wanted:
        problems.append(f"payloads {sorted(present ^ wanted, key=str)} differ from the state")
    objects = sr.meta / "objects"
    for sub in objects.iterdir():
        if not sub.is_dir():
            problems.append(f"leftover {sub}")  # the prune marker, say
            continue
        if sub.name == "tmp":
            problems += [f"leftover {p}" for p in sub.iterdir()]
            continue
        for obj in sub.iterdir():
            if obj.lstat().st_nlink < 2:
                problems.append(f"unreferenced object {obj}")
    entry_refs = sorted(refs_of_entries(bls_entries(boot)))
    if entry_refs != sorted(listed):
        problems.append(f"entries {entry_refs} != deployments {sorted(listed)}")
    if cfg.bootloader == "grub":
        ids = sorted(i for i, _ in grub_menu(boot))
        want = sorted("bootkit-" + r.replace("/", "-") for r in listed)
        if ids != want:
            problems.append(f"grub menu {ids} != {want}")
    return problems


def entry_name(filename: str) -> EntryName:
    name = EntryName.parse(filename)
    assert name is not None, filename
    return name


# --- staged deployments --------------------------------------------------------------


def numbered_tree(tmp_path: Path, n: int, **options: Any) -> Path:
    """Test tree number `n`: its version and kernel say `n`, so each deploys apart."""
    return make_tree(tmp_path / f"tree{n}", version=str(n), kernel=f"kernel {n}\n".encode(),
                     **options)


def bootloader_files(sr: Sysroot) -> dict[str, object]:
    """What the bootloaders read: $BOOT without bootkit's staged records and payloads."""
    return {k: v for k, v in snapshot(sr.boot_path).items() if not k.startswith("bootkit/test")
            and k not in ("bootkit/staged.json", "bootkit/finalize-failed.json")}
