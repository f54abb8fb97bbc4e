"""GRUB script text: one quoting function for every value, the fixed stub, parse_menu."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bootkit.formats import grubscript
from bootkit.formats.grubscript import Counting, MenuEntry, kernel_words, quote

# The stub is written once and never changes on a machine; a new bootkit must render
# the very same bytes, or it would rewrite grub.cfg in place on FAT.
STUB_SHA256 = "dfe46d3161594a3c3796bf93554886efe7252e017dbd4ae35511f6b8c3c1a44d"


@pytest.mark.parametrize(
    "value",
    ["/bootkit/os/6.1.0-1-amd64-0123abcd/linux", "root=LABEL=bootkit-root", "bootkit-os-1.2_x"],
)
def test_plain_values_stay_bare(value: str) -> None:
    assert quote(value) == value


@pytest.mark.parametrize(
    "value",
    ["Test OS 1 (1, x)", "Bob's OS", "$root", "a;b", "{x}", "two\twords", "", "a\\b", '"q"', "#c"],
)
def test_other_values_are_one_literal_word(value: str) -> None:
    quoted = quote(value)
    assert quoted.startswith("'") and quoted.endswith("'")
    # GRUB's lexer reads single quotes and the `'\''` escape as sh does.
    assert shlex.split(quoted) == [value]


def test_kernel_arguments_are_quoted_one_by_one() -> None:
    assert kernel_words("root=LABEL=r rw bootkit=/bootkit/deploy/os/deploy/1") == (
        "root=LABEL=r rw bootkit=/bootkit/deploy/os/deploy/1"
    )
    # GRUB's `linux` double-quotes a word with a space itself: the word must be `a=b c`.
    assert shlex.split(kernel_words('quiet a="b c" x=$y')) == ["quiet", "a=b c", "x=$y"]


def _entries(title: str, ident: str, path: str, options: str) -> list[MenuEntry]:
    return [
        MenuEntry(ident, title, f"{path}/linux", (f"{path}/initrd",), options),
        MenuEntry("bootkit-os-1", "Old", "", (), "rw", efi=f"{path}/uki.efi"),
    ]


def test_every_value_in_a_slot_goes_through_quote() -> None:
    title, ident, path = "It's $HOME {x}", "bootkit-os-2", "/boot kit/os"
    counted = "/bootkit/deploy/os/deploy/2 x"
    text = grubscript.render_slot(
        4, _entries(title, ident, path, "rw a=$b"), 3, Counting(counted, 2)
    )
    assert f"menuentry {quote(title)} --id {ident} {{" in text
    assert f"  linux {quote(path + '/linux')} rw {quote('a=$b')}" in text
    assert f"  initrd {quote(path + '/initrd')}" in text
    assert f"  chainloader {quote(path + '/uki.efi')} rw" in text
    assert f'"$bootkit_counted" = {quote(counted)}' in text
    assert "echo 'bootkit: boot tries left for bootkit-os-2: 1'" in text
    # As GRUB reads it: the title is one word, taken literally.
    menuentry = next(line for line in text.splitlines() if line.startswith("menuentry "))
    assert shlex.split(menuentry)[1] == title


def test_parse_menu_undoes_the_quoting() -> None:
    text = grubscript.render_slot(
        4, _entries("T 2", "bootkit-os-2", "/b k", 'rw a="b c"'), 3
    )
    assert grubscript.parse_menu(text) == [
        ("bootkit-os-2", "/b k/linux rw a=b c"),
        ("bootkit-os-1", "/b k/uki.efi rw"),
    ]
    assert grubscript.slot_generation(text) == 4


def test_the_stub_never_changes() -> None:
    stub = grubscript.render_stub()
    assert hashlib.sha256(stub.encode()).hexdigest() == STUB_SHA256, stub
    assert "source /bootkit/grub/slot-$bootkit_slot.cfg" in stub


def test_choose_slot_follows_the_stub() -> None:
    assert grubscript.choose_slot(set()) is None
    assert grubscript.choose_slot({1}) == 1
    assert grubscript.choose_slot({0, 1}) == 1
    assert grubscript.choose_slot({2, 0}) == 0


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="needs grub-common")
def test_grub_parses_the_stub_and_a_slot_with_awkward_values(tmp_path: Path) -> None:
    slot = grubscript.render_slot(
        9, _entries("It's $HOME {x}; }", "bootkit-os-2", "/b k", 'rw a="b c" d=$e'), 3,
        Counting("/bootkit/deploy/os/deploy/2", 3),
    )
    for name, text in (("grub.cfg", grubscript.render_stub()), ("slot.cfg", slot)):
        (tmp_path / name).write_text(text)
        proc = subprocess.run(["grub-script-check", str(tmp_path / name)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
