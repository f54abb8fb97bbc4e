"""The kernel arguments an image ships in usr/lib/bootkit/kargs.d, read from a hostile tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootkit.errors import BootkitError
from bootkit.sysroot.imageargs import (
    KARGS_DIR,
    MAX_FILE_BYTES,
    MAX_FILES,
    check_settable,
    read_image_kargs,
)


def tree_with(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tree"
    kdir = root / KARGS_DIR
    kdir.mkdir(parents=True)
    for name, text in files.items():
        (kdir / name).write_text(text)
    return root


def test_files_in_name_order_one_argument_a_line(tmp_path: Path) -> None:
    root = tree_with(tmp_path, {
        "20-console.conf": "console=ttyS0\n  # indented comment\n\nconsole=tty0\n",
        "10-quiet.conf": "# the image's defaults\nquiet\n\n   \nloglevel=3  \n",
        "30-notes.txt": "not-read\n",
        "05-README": "not-read-either\n",
    })
    assert read_image_kargs(root) == ("quiet", "loglevel=3", "console=ttyS0", "console=tty0")


def test_no_kargs_d_means_no_arguments(tmp_path: Path) -> None:
    (tmp_path / "tree/usr/lib").mkdir(parents=True)
    assert read_image_kargs(tmp_path / "tree") == ()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("quiet splash", "holds a blank"),
        ("a=$b", "GRUB expands variables"),
        ("a;b", "operator"),
        ("caf\u00e9", "printable ASCII"),
        ("root=/dev/sda1", "bootkit sets it itself"),
        ('"bootkit=/x"', "bootkit sets it itself"),
    ],
)
def test_a_bad_line_is_refused_naming_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    root = tree_with(tmp_path, {"10-a.conf": "quiet\n# fine\n" + line + "\n"})
    with pytest.raises(BootkitError) as err:
        read_image_kargs(root)
    assert f"/{KARGS_DIR}/10-a.conf in {root} line 3" in err.value.message
    assert why in err.value.message


def test_symlinks_are_followed_inside_the_tree_only(tmp_path: Path) -> None:
    outside = tmp_path / "host-kargs"
    outside.mkdir()
    (outside / "evil.conf").write_text("init=/bin/sh\n")
    root = tmp_path / "tree"
    (root / "usr/lib/bootkit").mkdir(parents=True)
    # An absolute symlink names the tree's own path, as at boot: not the host's directory.
    (root / KARGS_DIR).symlink_to(outside)
    assert read_image_kargs(root) == ()
    # Inside the tree, it is followed.
    (root / KARGS_DIR).unlink()
    (root / "usr/share/kargs").mkdir(parents=True)
    (root / "usr/share/kargs/10-own.conf").write_text("quiet\n")
    (root / KARGS_DIR).symlink_to("/usr/share/kargs")
    assert read_image_kargs(root) == ("quiet",)


def test_a_symlink_that_climbs_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil.conf").write_text("init=/bin/sh\n")
    root = tree_with(tmp_path, {})
    (root / KARGS_DIR / "10-evil.conf").symlink_to("../../../../../evil.conf")
    with pytest.raises(BootkitError, match="leads out of the tree"):
        read_image_kargs(root)
    (root / KARGS_DIR / "10-evil.conf").unlink()
    (root / KARGS_DIR / "10-evil.conf").symlink_to("/evil.conf")  # the tree's, which is missing
    with pytest.raises(BootkitError, match="leads nowhere inside the tree"):
        read_image_kargs(root)


def test_special_files_and_directories_are_refused(tmp_path: Path) -> None:
    root = tree_with(tmp_path, {})
    (root / KARGS_DIR / "10-dir.conf").mkdir()
    with pytest.raises(BootkitError, match="not a regular file"):
        read_image_kargs(root)


def test_size_and_count_are_bounded(tmp_path: Path) -> None:
    root = tree_with(tmp_path, {"10-big.conf": "#" * (MAX_FILE_BYTES + 1)})
    with pytest.raises(BootkitError, match=f"larger than {MAX_FILE_BYTES} bytes"):
        read_image_kargs(root)
    many = tree_with(tmp_path / "many", {f"{n:03}.conf": "quiet\n" for n in range(MAX_FILES + 1)})
    with pytest.raises(BootkitError, match=f"at most {MAX_FILES}"):
        read_image_kargs(many)
    fits = tree_with(tmp_path / "fits", {f"{n:03}.conf": f"a{n}\n" for n in range(MAX_FILES)})
    assert len(read_image_kargs(fits)) == MAX_FILES


@pytest.mark.parametrize("karg", ["root=x", "bootkit=/x", '"root=x"', 'root="x"'])
def test_what_bootkit_sets_itself_is_not_settable(karg: str) -> None:
    with pytest.raises(BootkitError, match="bootkit sets it itself"):
        check_settable(karg)


@pytest.mark.parametrize("karg", ["rootflags=ro", "rootwait", "bootkitx=1", "quiet"])
def test_names_that_only_start_alike_are_settable(karg: str) -> None:
    assert check_settable(karg) == karg
