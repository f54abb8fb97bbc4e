"""Disk images made and changed on the host, checked with mtools, e2fsprogs and sfdisk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.helpers import bls_entries, fails, make_tree, ok, untidy

from bootkit.boot.backends import grub, systemd_boot
from bootkit.diskimage import (
    DiskLayout,
    ImageSpec,
    create_image,
    deploy_to_image,
    edit_image,
    ext4fs,
    fatfs,
    parse_size,
    read_image,
)
from bootkit.errors import BootkitError
from bootkit.formats import gpt
from bootkit.sysroot.deploy import DeployRequest
from bootkit.sysroot.importers import open_source
from bootkit.sysroot.status import status as read_status

MIB = 1 << 20
TOOLS = ("mformat", "mcopy", "mke2fs", "debugfs", "e2fsck")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None and not Path("/usr/sbin", t).exists() for t in TOOLS),
    reason="needs mtools and e2fsprogs",
)
needs_systemd_boot = pytest.mark.skipif(
    not systemd_boot.SYSTEMD_BOOT_EFI.is_file(), reason="systemd-boot-efi not installed"
)
needs_grub = pytest.mark.skipif(
    not (grub.GRUB_MODULE_DIR / "linux.mod").is_file() or shutil.which("grub-mkimage") is None,
    reason="grub-efi-amd64-bin not installed",
)
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    shared = "the same in every version\n" * 100
    return {
        v: make_tree(base / f"v{v}", version=v, kernel=f"kernel {v}\n".encode(),
                     files={"usr/share/doc/readme": shared, "usr/lib/only-in": v})
        for v in ("1", "2", "3")
    }


def small_image(path: Path, bootloader: str, sources: list[Path]) -> list[str]:
    return create_image(ImageSpec(path, 110 * MIB, bootloader, tuple(sources), os_name="test",
                                  esp_size=40 * MIB, kargs=("console=ttyS0",)))


def esp_file(image: Path, path: str) -> bytes:
    layout = DiskLayout.read(image)
    proc = subprocess.run(["mtype", "-i", f"{image}@@{layout.esp.offset}", f"::{path}"],
                          capture_output=True, env=MTOOLS_ENV, check=True)
    return proc.stdout


def debugfs(image: Path, command: str) -> str:
    layout = DiskLayout.read(image)
    proc = subprocess.run(["debugfs", "-R", command, f"{image}?offset={layout.root.offset}"],
                          capture_output=True, text=True, check=True)
    return proc.stdout


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("2G", 2 << 30), ("512M", 512 * MIB), ("300MiB", 300 * MIB), ("1.5G", 1536 * MIB),
    ("1048576", MIB), ("1000", MIB), ("64k", MIB),
])
def test_sizes_are_parsed_and_rounded_up_to_mib(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "-1G", "0", "2X", "1.2.3M"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(BootkitError, match="size"):
        parse_size(text)


# --- making an image ------------------------------------------------------------------------


@needs_systemd_boot
def test_image_holds_esp_and_root_with_every_deployment(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    ids = small_image(image, "systemd-boot", [trees["1"], trees["2"]])
    assert len(ids) == 2
    table = gpt.read_partition_table(image)
    sfdisk = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert sfdisk.returncode == 0, sfdisk.stdout + sfdisk.stderr
    layout = DiskLayout(table)
    assert layout.esp.offset == MIB and layout.esp.size == 40 * MIB
    assert layout.root.offset + layout.root.size <= image.stat().st_size - 33 * 512

    # The ESP: the bootloader at the removable path, the kernels, one entry per deployment.
    assert esp_file(image, "/EFI/BOOT/BOOTX64.EFI") == systemd_boot.SYSTEMD_BOOT_EFI.read_bytes()
    entries = subprocess.run(
        ["mdir", "-b", "-i", f"{image}@@{layout.esp.offset}", "::/loader/entries"],
        capture_output=True, text=True, env=MTOOLS_ENV, check=True).stdout.split()
    entries = [e.rsplit("/", 1)[-1] for e in entries]
    assert len(entries) == 2
    assert b"timeout" in esp_file(image, "/loader/loader.conf")
    _, label = fatfs.read_volume_id(image, layout.esp.offset)
    assert label == "ESP"
    if shutil.which("fsck.fat") or Path("/usr/sbin/fsck.fat").exists():
        part = tmp_path / "esp.img"
        with open(image, "rb") as disk, open(part, "wb") as out:
            disk.seek(layout.esp.offset)
            out.write(disk.read(layout.esp.size))
        check = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    fsck = subprocess.run(["e2fsck", "-fn", f"{image}?offset={layout.root.offset}"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    # The root: ext4 labelled for root=LABEL=, the deployments, an empty /efi.
    sb = ext4fs.read_superblock(image, layout.root.offset)
    assert sb.label == "bootkit-root" and sb.clean and not sb.needs_recovery
    listing = debugfs(image, "ls -p /bootkit/deploy/test/deploy")
    for dep_id in ids:
        assert f"/{dep_id}/" in listing and f"/{dep_id}.json/" in listing
    assert [n.split("/")[5] for n in debugfs(image, "ls -p /efi").split()] == [".", ".."]
    texts = [esp_file(image, f"/loader/entries/{name}").decode() for name in entries]
    for dep_id in ids:
        (entry,) = [t for t in texts if f"bootkit=/bootkit/deploy/test/deploy/{dep_id} " in t]
        assert "root=LABEL=bootkit-root" in entry and "console=ttyS0" in entry


@needs_systemd_boot
def test_identical_files_stay_hard_links_in_the_image(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    first, second = small_image(image, "systemd-boot", [trees["1"], trees["2"]])
    with read_image(image) as sr:
        a = sr.deployment_dir("test", first) / "usr/share/doc/readme"
        b = sr.deployment_dir("test", second) / "usr/share/doc/readme"
        assert a.stat().st_ino == b.stat().st_ino
        assert (sr.deployment_dir("test", second) / "usr/lib/only-in").read_text() == "2"
    # Checked on the filesystem itself too, not only through bootkit's reader.
    stat_out = debugfs(image, f"stat /bootkit/deploy/test/deploy/{first}/usr/share/doc/readme")
    assert "Links: 1" not in stat_out


@needs_grub
def test_grub_image_finds_the_stub_on_the_esp(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    small_image(image, "grub", [trees["1"]])
    binary = esp_file(image, "/EFI/BOOT/BOOTX64.EFI")
    assert binary[:2] == b"MZ"
    assert b"search --no-floppy --set=root --file /grub/grub.cfg" in binary
    assert b"terminal_output serial console" in binary
    stub = esp_file(image, "/grub/grub.cfg").decode()
    assert "slot-0.cfg" in stub


def test_existing_image_is_kept_without_force(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"precious")
    message = fails("image", "create", image, trees["1"], "--size", "110M", "--esp-size", "40M",
                    "--bootloader", "systemd-boot")
    assert "already exists" in message
    assert image.read_bytes() == b"precious"


def test_missing_source_is_refused_before_any_work(tmp_path: Path) -> None:
    message = fails("image", "create", tmp_path / "disk.img", tmp_path / "nope", "--size", "110M",
                    "--bootloader", "grub")
    assert "does not exist" in message
    assert list(tmp_path.iterdir()) == []


def test_image_too_small_for_its_esp_is_refused(tmp_path: Path, trees: dict[str, Path]) -> None:
    message = fails("image", "create", tmp_path / "disk.img", trees["1"], "--size", "100M",
                    "--esp-size", "64M", "--bootloader", "systemd-boot")
    assert "no room for the root filesystem" in message
    assert list(tmp_path.iterdir()) == []


def test_bad_size_is_a_usage_error(tmp_path: Path, trees: dict[str, Path]) -> None:
    message = fails("image", "create", tmp_path / "disk.img", trees["1"], "--size", "lots",
                    "--bootloader", "systemd-boot")
    assert "invalid size" in message


@needs_systemd_boot
def test_failed_build_leaves_no_file(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    # A root partition of 64 MiB cannot hold a tree with an 80 MiB file.
    # A nonzero byte in every block: mke2fs cannot store any of it as a hole.
    big = make_tree(tmp_path / "big", files={"usr/share/blob": (b"\x01" + bytes(4095)) * (20 * 1024)})
    with pytest.raises(BootkitError, match="root filesystem"):
        small_image(image, "systemd-boot", [big])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


# --- changing an image -----------------------------------------------------------------------


@needs_systemd_boot
def test_deploy_rollback_and_set_default_keep_var_etc_and_ids(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    first, = small_image(image, "systemd-boot", [trees["1"]])
    layout = DiskLayout.read(image)
    esp_id = fatfs.read_volume_id(image, layout.esp.offset)
    root_uuid = ext4fs.read_superblock(image, layout.root.offset).uuid
    # What a booted system would have written.
    with edit_image(image) as sr:
        (sr.stateroot("test") / "var/written-by-guest").write_text("keep me\n")
        (sr.deployment_dir("test", first) / "etc/hostname").write_text("renamed\n")

    ok("image", "deploy", image, trees["2"])
    with read_image(image) as sr:
        status = read_status(sr).rows
        assert [s.deployment.version for s in status] == ["2", "1"] and status[0].default
        second = status[0].deployment.id
        assert (sr.stateroot("test") / "var/written-by-guest").read_text() == "keep me\n"
        # The local change to /etc is carried into the new deployment.
        assert (sr.deployment_dir("test", second) / "etc/hostname").read_text() == "renamed\n"
        # The new deployment inherits the kernel arguments of the previous default.
        assert status[0].deployment.kargs == ("console=ttyS0",)
        assert untidy(sr) == []

    ok("image", "rollback", image)
    with read_image(image) as sr:
        assert read_status(sr).rows[0].deployment.id == first
    ok("image", "set-default", image, second)
    with read_image(image) as sr:
        assert read_status(sr).rows[0].deployment.id == second

    # The boot chain finds the filesystems by these; they survive every rewrite.
    assert fatfs.read_volume_id(image, layout.esp.offset) == esp_id
    assert ext4fs.read_superblock(image, layout.root.offset).uuid == root_uuid
    assert DiskLayout.read(image) == layout


@needs_systemd_boot
def test_deploy_to_image_counts_the_import_and_keeps_kargs(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    small_image(image, "systemd-boot", [trees["1"]])
    imports: list[tuple[Path, int, int]] = []

    @contextlib.contextmanager
    def progress(source: Path, total: Callable[[], int]) -> Iterator[Callable[[int], None]]:
        counted: list[int] = []
        yield counted.append
        imports.append((source, total(), sum(counted)))

    deploy_to_image(image, DeployRequest(trees["2"], kargs=("console=ttyS0", "quiet")),
                    progress=progress)
    # No kargs: those of the previous deployment of the OS, the one just made.
    deploy_to_image(image, DeployRequest(trees["3"], make_default=False))
    with read_image(image) as sr:
        kargs = {d.version: d.kargs for d in sr.deployments()}
        assert read_status(sr).rows[0].deployment.version == "2"
    assert kargs == {"1": ("console=ttyS0",), "2": ("console=ttyS0", "quiet"),
                     "3": ("console=ttyS0", "quiet")}
    # What the bar is sized by, and what the import counted against it.
    ((source, total, counted),) = imports
    assert source == trees["2"] and total == open_source(trees["2"]).size()
    assert 0 < counted <= total


def test_deploy_to_image_refuses_a_missing_source_first(tmp_path: Path) -> None:
    with pytest.raises(BootkitError, match=r"source .*nope does not exist"):
        deploy_to_image(tmp_path / "no-image.img", DeployRequest(tmp_path / "nope"))


@needs_systemd_boot
def test_failed_change_leaves_the_image_untouched(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    small_image(image, "systemd-boot", [trees["1"]])
    before = image.read_bytes()
    message = fails("image", "deploy", image, tmp_path / "no-such-tree")
    assert "does not exist" in message
    message = fails("image", "rollback", image)
    assert "no other deployment" in message
    assert image.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img"]


@needs_systemd_boot
def test_tries_are_set_at_create_and_per_deploy(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    ok("image", "create", image, trees["1"], "--size", "110M", "--esp-size", "40M",
       "--bootloader", "systemd-boot", "--os", "test", "--tries", "0")
    with read_image(image) as sr:
        assert [(s.counter.state, s.counter.left) for s in read_status(sr).rows] == [("good", None)]

    ok("image", "deploy", image, trees["2"], "--tries", "5")
    with read_image(image) as sr:
        counters = [(s.deployment.version, s.counter.left) for s in read_status(sr).rows]
        assert counters == [("2", 5), ("1", None)]
        assert any(p.name.endswith("+5.conf") for p in (sr.boot_path / "loader/entries").iterdir())


@needs_systemd_boot
def test_images_count_boots_by_default(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    small_image(image, "systemd-boot", [trees["1"]])
    with read_image(image) as sr:
        assert [s.counter.left for s in read_status(sr).rows] == [3]


def test_image_commands_refuse_a_file_without_gpt(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(8 * MIB)
    assert "no valid GPT" in fails("image", "status", image)
    assert "no valid GPT" in fails("image", "rollback", image)


@needs_systemd_boot
def test_status_lists_the_menu_in_order(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    first, second = small_image(image, "systemd-boot", [trees["1"], trees["2"]])
    out = ok("image", "status", image).stdout
    assert out.index(second) < out.index(first)
    assert out.lstrip().startswith("*")


@needs_systemd_boot
def test_image_edits_keep_extended_attributes(tmp_path: Path, trees: dict[str, Path]) -> None:
    image = tmp_path / "disk.img"
    small_image(image, "systemd-boot", [trees["1"]])
    with edit_image(image) as sr:
        seed = sr.stateroot("test") / "var/random-seed"
        seed.write_bytes(b"seed")
        # What systemd-random-seed sets in a guest.
        try:
            os.setxattr(seed, "user.random-seed-creditable", b"1")
        except OSError as err:
            pytest.skip(f"cannot set extended attributes here: {err.strerror}")
    ok("image", "deploy", image, trees["2"])
    ok("image", "rollback", image)
    assert debugfs(image, "ea_list /bootkit/deploy/test/var/random-seed").splitlines()[1:] == [
        '  user.random-seed-creditable (1) = "1"'
    ]


@needs_systemd_boot
def test_image_arguments_reach_the_images_entries(tmp_path: Path) -> None:
    """Made or updated, an image's deployments take their tree's kargs.d, then --karg."""
    kargs_d = "usr/lib/bootkit/kargs.d/10-image.conf"
    one = make_tree(tmp_path / "one", version="1", files={kargs_d: "quiet\n"})
    two = make_tree(tmp_path / "two", version="2", kernel=b"kernel 2\n",
                    files={kargs_d: "splash\n"})
    image = tmp_path / "disk.img"
    small_image(image, "systemd-boot", [one])
    deploy_to_image(image, DeployRequest(two))
    with read_image(image) as sr:
        found = {d.version: (d.image_kargs, d.kargs) for d in sr.deployments()}
        options = sorted(e.options.split(" ", 3)[3] for _, e in bls_entries(sr.boot_path))
    assert found == {"1": (("quiet",), ("console=ttyS0",)), "2": (("splash",), ("console=ttyS0",))}
    assert options == ["quiet console=ttyS0", "splash console=ttyS0"]
