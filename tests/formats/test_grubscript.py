"""GRUB script text: one quoting function for every value, the fixed stub, parse_menu."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from support.bootreaders import Token, grub_cmdline, grub_command, grub_tokens, kernel_params

from bootkit.errors import BootkitError
from bootkit.formats import grubscript
from bootkit.formats.bootvalues import MAX_TRIES
from bootkit.formats.grubscript import COUNTED_VAR, Counting, MenuEntry, kernel_words, quote

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


def test_quoting_alone_keeps_refused_arguments_literal() -> None:
    # The second line of defence: should a refused argument ever reach the slot file,
    # GRUB would still pass it on as one word, run nothing and expand nothing.
    hostile = "a;reboot $prefix x}{ y|z 'q' #c"
    assert grub_command(f"linux /k {kernel_words(hostile)}") == [
        "linux", "/k", "a;reboot", "$prefix", "x}{", "y|z", "'q'", "#c"
    ]


def _entries(title: str, ident: str, path: str, options: str) -> list[MenuEntry]:
    return [
        MenuEntry(ident, title, f"{path}/linux", (f"{path}/initrd",), options),
        MenuEntry("bootkit-os-1", "Old", "", (), "rw", efi=f"{path}/uki.efi"),
    ]


# Values a tree or a user can bring that GRUB must take literally: all of them pass
# validation, and GRUB script would read each of them as something else unquoted.
TITLE = "It's $HOME {x}; } #1 | a && b > c"
OPTIONS = 'root=LABEL=r rw bootkit=/bootkit/deploy/os/deploy/2 a="b" c=d#e f=`g` x!y=z,[1]'
PATH = "/bootkit/os/6.1+x_y-0123abcd"


def test_every_value_in_a_slot_goes_through_quote(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mark what quote() returns; whatever is left unmarked is bootkit's own fixed text.
    monkeypatch.setattr(grubscript, "quote", lambda value: f"\x00{value}\x01")
    counted = "/bootkit/deploy/os/deploy/2"
    entries = _entries(TITLE, "bootkit-os-2", PATH, OPTIONS)
    text = grubscript.render_slot(4, entries, 3, Counting(counted, 2))
    fixed = re.sub("\x00[^\x00\x01]*\x01", "", text)
    values = [TITLE, "bootkit-os-2", "bootkit-os-1", "Old", PATH, counted, "LABEL", "a=b", "c=d"]
    assert [v for v in values if v in fixed] == []
    assert "\x00bootkit-os-2\x01" in text and "\x00a=b\x01" in text


def test_grub_reads_each_value_as_one_literal_word() -> None:
    counted = "/bootkit/deploy/os/deploy/2"
    text = grubscript.render_slot(
        4, _entries(TITLE, "bootkit-os-2", PATH, OPTIONS), 3, Counting(counted, 2)
    )
    lines = [line.strip() for line in text.splitlines()]
    menuentries = [grub_command(line.removesuffix(" {")) for line in lines
                   if line.startswith("menuentry ")]
    assert menuentries == [
        ["menuentry", TITLE, "--id", "bootkit-os-2"], ["menuentry", "Old", "--id", "bootkit-os-1"]
    ]
    linux = next(grub_command(line) for line in lines if line.startswith("linux "))
    # GRUB's `linux` gets each kernel argument as one word; the kernel reads the same
    # parameters from what GRUB passes it as from the options written verbatim.
    assert linux[:2] == ["linux", f"{PATH}/linux"]
    assert kernel_params(grub_cmdline(linux[2:])) == kernel_params(OPTIONS)
    assert next(grub_command(line) for line in lines if line.startswith("initrd ")) == [
        "initrd", f"{PATH}/initrd"
    ]
    counting = next(line for line in lines if COUNTED_VAR in line and line.startswith("if"))
    test = grub_tokens(counting.removeprefix("if [").removesuffix("]; then"))
    assert test == [Token("word", f"${COUNTED_VAR}", expands=True), Token("word", "="),
                    Token("word", counted)]


def test_parse_menu_undoes_the_quoting() -> None:
    text = grubscript.render_slot(
        4, _entries("T 2", "bootkit-os-2", "/b/k", 'rw a="b"'), 3
    )
    assert grubscript.parse_menu(text) == [
        ("bootkit-os-2", "/b/k/linux rw a=b"),
        ("bootkit-os-1", "/b/k/uki.efi rw"),
    ]
    assert grubscript.slot_generation(text) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": "T\nmenuentry x {"}, "control character U+000A"),
        ({"title": " T"}, "begins or ends with a blank"),
        ({"title": "T\u202e"}, "control character U+202E"),
        ({"title": ""}, "empty"),
        ({"id": "bootkit-os-2 x"}, "GRUB menu entry id"),
        ({"id": "bootkit-os-2'"}, "GRUB menu entry id"),
        ({"linux": "/b/6.1;reboot/linux"}, "GRUB boot file"),
        ({"linux": "/b/../linux"}, "GRUB boot file"),
        ({"linux": "b/linux"}, "absolute path"),
        ({"initrd": ("/b/i nitrd",)}, "GRUB boot file"),
        ({"efi": "/b/$prefix.efi"}, "GRUB boot file"),
        ({"options": "rw a;reboot"}, "';'"),
        ({"options": "rw x=$prefix"}, "'$'"),
        ({"options": "rw\nreboot"}, "blank"),
        ({"options": "rw a=\"b c\""}, "double quote"),
        ({"options": "rw  x"}, "empty"),
        ({"options": "rw x=" + "y" * 2100}, "the kernel reads at most 2048"),
    ],
)
def test_a_value_grub_cannot_carry_is_refused(change: dict[str, object], message: str) -> None:
    entry = replace(_entries("T", "bootkit-os-2", "/b", "rw")[0], **change)  # type: ignore[arg-type]
    with pytest.raises(BootkitError, match=re.escape(message)):
        grubscript.render_slot(1, [entry], 3)


@pytest.mark.parametrize(
    ("timeout", "counting", "generation"),
    [(-1, None, 1), (True, None, 1), ("3;reboot", None, 1), (10**6, None, 1),
     (3, Counting("/x", MAX_TRIES + 1), 1), (3, Counting("/x y", 3), 1), (3, None, -1)],
)
def test_numbers_and_the_counted_path_are_checked(
    timeout: object, counting: Counting | None, generation: int
) -> None:
    with pytest.raises(BootkitError):
        grubscript.render_slot(generation, _entries("T", "bootkit-os-2", "/b", "rw"),
                               timeout, counting)  # type: ignore[arg-type]


def test_the_slot_file_is_bounded_by_the_most_tries() -> None:
    entries = _entries("T", "bootkit-os-2", "/b", "rw")
    text = grubscript.render_slot(1, entries, 3, Counting("/bootkit/deploy/os/deploy/2",
                                                          MAX_TRIES))
    assert len(text) < 40_000


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
        9, _entries(TITLE, "bootkit-os-2", PATH, OPTIONS), 3,
        Counting("/bootkit/deploy/os/deploy/2", MAX_TRIES),
    )
    for name, text in (("grub.cfg", grubscript.render_stub()), ("slot.cfg", slot)):
        (tmp_path / name).write_text(text)
        proc = subprocess.run(["grub-script-check", str(tmp_path / name)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
