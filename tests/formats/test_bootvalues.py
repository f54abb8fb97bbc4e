"""The rules for values that reach a boot file, against what each reader makes of them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.bootreaders import grub_cmdline, grub_command, kernel_params

from bootkit.errors import BootkitError
from bootkit.formats import bootvalues
from bootkit.formats.bootvalues import (
    MAX_TIMEOUT,
    MAX_TRIES,
    check_command_line,
    check_kernel_argument,
    check_kernel_version,
    check_path,
    check_timeout,
    check_title,
    check_tries,
    check_version,
)
from bootkit.formats.grubscript import kernel_words, quote

needs_grub = pytest.mark.skipif(
    shutil.which("grub-script-check") is None, reason="needs grub-script-check (grub-common)"
)

REAL_KERNEL_VERSIONS = [
    "6.1.0-18-amd64",
    "6.5.6-300.fc39.x86_64",
    "5.14.0-362.8.1.el9_3.x86_64",
    "6.10.0-0.rc5.20240628git.1.fc41.x86_64",
    "6.7.4-arch1-1",
    "6.6.0+",
    "6.8.0-1005-raspi",
    "4.19.0-rt",
]

REAL_KERNEL_ARGUMENTS = [
    "quiet",
    "rw",
    "--",
    "console=ttyS0,115200n8",
    "systemd.unit=rescue.target",
    "video=HDMI-A-1:1920x1080@60",
    "acpi_osi=!Linux",
    "ip=[2001:db8::2]::[2001:db8::1]:64::eth0:none",
    "rd.luks.uuid=luks-0b4d3c2a",
    "systemd.setenv=LANG=C.UTF-8",
    'dyndbg="module=xhci_hcd"',
    '"panic=10"',
    "memmap=64M#0x100000000",
    "a=",
    'a=""',
    "modprobe.blacklist=nouveau,radeon",
    "isolcpus=1-3,5",
    "%x@y^z~`w`",
]


@pytest.mark.parametrize("kver", REAL_KERNEL_VERSIONS)
def test_real_kernel_versions_pass(kver: str) -> None:
    assert check_kernel_version(kver) == kver


@pytest.mark.parametrize(
    "kver",
    [
        "6.1;reboot; }",
        "6.1\nx",
        "6.1 x",
        "6.1$prefix",
        "6.1'x",
        '6.1"x',
        "6.1:x",  # FAT refuses : * ? < > | " \ in names
        "6.1*",
        "6.1\\x",
        "6.1\udcff",  # a name that is not UTF-8
        "6.1\u00e9",
        "x6.1",
        "-6.1",
        "",
        "6" + "x" * 64,
        None,
        61,
    ],
)
def test_odd_kernel_versions_are_refused(kver: object) -> None:
    with pytest.raises(BootkitError, match="kernel release starts with a digit"):
        check_kernel_version(kver)


@pytest.mark.parametrize("arg", REAL_KERNEL_ARGUMENTS)
def test_real_kernel_arguments_pass_and_mean_the_same_to_every_reader(arg: str) -> None:
    assert check_kernel_argument(arg) == arg
    assert _as_each_reader_sees_it(arg) == kernel_params(arg)


def _as_each_reader_sees_it(options: str) -> list[tuple[str, str | None]]:
    """The kernel's parameters from GRUB's slot file and from GRUB's blscfg, which must
    agree; systemd-boot passes the options verbatim."""
    slot = grub_command(f"linux /k {kernel_words(options)}")
    blscfg = grub_command(f"linux /k {options}")
    assert slot[:2] == blscfg[:2] == ["linux", "/k"]
    from_slot = kernel_params(grub_cmdline(slot[2:]))
    assert kernel_params(grub_cmdline(blscfg[2:])) == from_slot
    return from_slot


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("a;reboot", "';'"),
        ("$prefix", "'$'"),
        ("x=${root}", "'$'"),
        ("a|b", "'|'"),
        ("a&b", "'&'"),
        ("a<b", "'<'"),
        ("a>b", "'>'"),
        ("a{b", "'{'"),
        ("}", "'}'"),
        ("it's", "escaped"),
        ("a\\b", "escaped"),
        ("/boot/*", "wildcard"),
        ("a?", "wildcard"),
        ("a b", "blank"),
        ("a\tb", "blank"),
        ("a\nreboot", "blank"),
        ("a\x00b", "U+0000"),
        ("caf\u00e9", "U+00E9"),
        ("a\x7f", "U+007F"),
        ("", "empty"),
        ("#comment", "comment"),
        ("[[", "keyword"),
        ('a"b"c', "double quote"),
        ('a="b', "double quote"),
        ('"a', "double quote"),
        ('""', "double quote"),
        ('a="b"c"', "double quote"),
        ("a=" + "b" * 1100, "longer than"),
        (5, "not text"),
    ],
)
def test_kernel_arguments_readers_disagree_on_are_refused(arg: object, reason: str) -> None:
    with pytest.raises(BootkitError, match=re.escape(reason)) as refused:
        check_kernel_argument(arg)
    assert refused.value.hint and "one kernel argument at a time" in refused.value.hint


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12))
def test_every_kernel_argument_that_passes_means_the_same_to_every_reader(arg: str) -> None:
    try:
        check_kernel_argument(arg)
    except BootkitError:
        return
    assert _as_each_reader_sees_it(arg) == kernel_params(arg)
    assert len(kernel_params(arg)) == 1


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",))))
def test_quote_makes_any_text_one_literal_grub_word(value: str) -> None:
    assert grub_command(f"echo {quote(value)}") == ["echo", value]


@needs_grub
def test_grub_parses_every_real_argument_as_blscfg_pastes_it(tmp_path: Path) -> None:
    options = " ".join(["root=LABEL=r", *REAL_KERNEL_ARGUMENTS])
    script = tmp_path / "entry.cfg"
    script.write_text(f"menuentry t {{\n  linux (hd0,gpt1)/k {options}\n}}\n")
    proc = subprocess.run(["grub-script-check", str(script)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_command_line_the_kernel_would_cut_is_refused() -> None:
    fits = " ".join(["a=" + "b" * 1000, "c=" + "d" * 1000])
    assert check_command_line(fits) == fits
    with pytest.raises(BootkitError, match="at most 2048"):
        check_command_line(fits + " " + "e" * 50)
    with pytest.raises(BootkitError, match="';'"):
        check_command_line("root=x rw a;reboot")


@pytest.mark.parametrize(
    "title",
    [
        "Fedora Linux 40 (Workstation Edition)",
        "Debian GNU/Linux 12 (bookworm)",
        "It's $HOME {x}; } #1",
        "\U0001f3f3\ufe0f\u200d\U0001f308 OS",  # an emoji joined by ZWJ
        "Ubuntu\u00a024.04",
    ],
)
def test_titles_pass(title: str) -> None:
    assert check_title(title) == title


@pytest.mark.parametrize(
    ("title", "reason"),
    [
        ("a\nb", "U+000A"),
        ("a\rb", "U+000D"),
        ("a\x85b", "U+0085"),
        ("a\u2028b", "U+2028"),
        ("a\x1b[31mb", "U+001B"),
        ("a\tb", "U+0009"),
        ("a\x00", "U+0000"),
        ("safe\u202egnp.exe", "U+202E"),
        ("a\udcffb", "U+DCFF"),
        (" a", "blank"),
        ("a ", "blank"),
        ("a\u3000", "blank"),
        ("", "empty"),
        ("x" * 256, "longer than 255"),
        (["a"], "not text"),
    ],
)
def test_titles_no_reader_can_carry_are_refused(title: object, reason: str) -> None:
    with pytest.raises(BootkitError, match=re.escape(reason)):
        check_title(title, "title")


def test_versions_follow_the_text_rules_with_their_own_limit() -> None:
    assert check_version("12 (bookworm)") == "12 (bookworm)"
    with pytest.raises(BootkitError, match="longer than 64"):
        check_version("1" * 65)
    with pytest.raises(BootkitError, match=re.escape("U+000A")):
        check_version("1\ntitle x")


@pytest.mark.parametrize(
    "path", ["/bootkit/os/6.1-abc/linux", "/a/_b/+c/-d"]
)
def test_boot_paths_pass(path: str) -> None:
    assert check_path(path, "file") == path


@pytest.mark.parametrize(
    "path", ["bootkit/linux", "/a/../linux", "/a/./linux", "/a//b", "/a/b c", "/a/$b", "/a/", "",
             "/" + "a" * 256]
)
def test_odd_boot_paths_are_refused(path: str) -> None:
    with pytest.raises(BootkitError, match="file"):
        check_path(path, "file")


def test_counts_are_bounded() -> None:
    assert check_tries(0) == 0 and check_tries(MAX_TRIES) == MAX_TRIES
    assert check_timeout(0) == 0 and check_timeout(MAX_TIMEOUT) == MAX_TIMEOUT
    for bad in (-1, MAX_TRIES + 1, 200_000, True, "3", 3.0, None):
        with pytest.raises(BootkitError, match=f"from 0 to {MAX_TRIES}"):
            check_tries(bad)
    for bad in (-5, MAX_TIMEOUT + 1, "3\nreboot", False):
        with pytest.raises(BootkitError, match=f"from 0 to {MAX_TIMEOUT} seconds"):
            check_timeout(bad)


def test_the_limits_are_those_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"at most {MAX_TRIES}, and 0 turns counting off" in readme
    assert f"The menu timeout is 0 to {MAX_TIMEOUT} seconds" in readme
    assert "`' \\ $ ; | & < > { } * ?`" in readme
    assert set("'\\$;|&<>{}*?") == set(bootvalues._ARGUMENT_REFUSALS)
