"""Fuzzing the deploy with what a hostile image or a careless admin brings, as the trusted
tools do it: hypothesis generates kernel versions (the directory names of a tree),
os-release values (NAME, PRETTY_NAME, VERSION_ID, VERSION), requested versions,
kernel arguments and small tar archives with odd file names, and each case is
deployed into a fresh copy of a sysroot, once per bootloader. Whatever the input, bootkit either refuses it with a BootkitError, leaving
the sysroot exactly as it was, or deploys it, and then:

- nothing was written outside the sysroot (the example's other files are unchanged);
- state, every deployment record and `status` load, and the sysroot is tidy (one
  entry per deployment, no leftovers, every payload referenced);
- every BLS entry parses back to the same keys, carrying the deployment's values;
- every GRUB file passes `grub-script-check` (Debian's grub-common, a real oracle; the
  check is skipped where it is missing) and the slot file holds exactly one menuentry
  per deployment; so does what GRUB's blscfg makes of each BLS entry; the kernel reads the same parameters from the slot file,
  from blscfg and from the verbatim options that systemd-boot passes.

The normal suite tries BOOTKIT_FUZZ_EXAMPLES inputs per bootloader (default 100); set it
higher for a longer run. The counts of inputs tried and refused are printed and recorded
as the test's properties.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.bootreaders import blscfg_script, grub_cmdline, grub_command, kernel_params
from support.helpers import (
    bls_entries,
    deploy_tree,
    grub_slot_text,
    init_sysroot,
    make_tree,
    snapshot,
    untidy,
)

from bootkit.boot.entries import options_for
from bootkit.errors import BootkitError
from bootkit.formats import grubscript
from bootkit.formats.bls import parse_entry
from bootkit.sysroot.deploy import DeployRequest, deploy
from bootkit.sysroot.layout import Sysroot
from bootkit.sysroot.status import status

BOOTLOADERS = ["systemd-boot", "grub"]
EXAMPLES = int(os.environ.get("BOOTKIT_FUZZ_EXAMPLES", "100"))
GRUB_CHECK = shutil.which("grub-script-check")
# What the fuzzer found, by bootloader: inputs tried, refused (by reason) and deployed.
STATS: dict[str, Counter[str]] = {}

# --- what a hostile image or a careless admin brings ----------------------------------

# Characters each reader treats specially: GRUB script, BLS lines, FAT, the kernel.
_SPECIAL = [
    *" \t\n\r\x0b\x0c\x00\x1b\x7f\x85'\"\\$;|&<>{}#*?[]()=,:@!~`%^+",
    "\u2028", "\u202e", "\u00a0", "\u00e9", "\U0001f600", "[[", "${root}", "$prefix",
]


def _odd_text(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(st.sampled_from(_SPECIAL), st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                  st.characters(exclude_categories=("Cs",))),
        max_size=max_size,
    ).map("".join)


def _is_file_name(name: str) -> bool:
    return _is_file_name_or_too_long(name) and len(os.fsencode(name)) <= 255


def _is_file_name_or_too_long(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


# Half the inputs of each kind look like what a real image brings, so that the
# deploys that pass go deep (kernel, os-release, kernel arguments, all together).
KERNEL_VERSIONS = st.one_of(
    st.from_regex(r"\A[0-9][A-Za-z0-9._+-]{0,20}\Z"),
    st.from_regex(r"\A[0-9]\.[0-9]{1,2}\.[0-9]-[a-z0-9.+]{1,12}\Z"),
    st.sampled_from(["6.1.0-18-amd64", "6.5.6-300.fc39.x86_64", "6.6.0+"]),
    st.sampled_from(["6.1.0-18-amd64", "6.1;reboot; }", "6.1\nx", "6.1 $prefix", "6.1\udcff",
                     "6." + "1" * 70]),
    _odd_text(16),
).filter(_is_file_name)
OS_RELEASE_VALUE = st.one_of(st.none(), st.sampled_from(["Debian GNU/Linux 12 (bookworm)", "12"]),
                             _odd_text(24), st.text(max_size=300))
KERNEL_ARGUMENT = st.one_of(
    st.from_regex(r"\A[a-z_.]{1,8}(=[A-Za-z0-9,:.#!-]{0,8})?\Z"),
    st.from_regex(r'\A[a-z_.]{1,8}="[A-Za-z0-9,:. ]{0,8}"\Z'),
    st.sampled_from(["quiet", 'dyndbg="module=x"', "a;reboot", "$prefix", "}", "#x", "[["]),
    _odd_text(10),
)


MEMBER_NAME = st.builds(
    lambda top, leaf: f"{top}/{leaf}",
    st.sampled_from(["etc", "usr/share/doc", "var/lib", "opt", "usr/lib/modules"]),
    st.one_of(_odd_text(12), st.sampled_from(["x" * 256, "\u00e9" * 128, "a\udcffb"]))
    .filter(_is_file_name_or_too_long),
)


@dataclass(frozen=True)
class Case:
    kver: str
    os_release: dict[str, str]
    version: str | None
    kargs: tuple[str, ...] | None
    # None: the tree is deployed as a directory; else as a tar archive that also holds
    # these odd file names.
    archived: tuple[str, ...] | None = None


CASES = st.builds(
    Case,
    kver=KERNEL_VERSIONS,
    os_release=st.fixed_dictionaries(
        {}, optional={k: OS_RELEASE_VALUE.filter(lambda v: v is not None)
                      for k in ("NAME", "PRETTY_NAME", "VERSION_ID", "VERSION")},
    ),
    version=st.one_of(st.none(), st.none(), st.sampled_from(["1", "2 (two)"]), _odd_text(12)),
    kargs=st.one_of(st.none(), st.just(()), st.lists(KERNEL_ARGUMENT, max_size=4).map(tuple)),
    archived=st.one_of(st.none(), st.lists(MEMBER_NAME, max_size=3, unique=True).map(tuple)),
)


# --- one example -----------------------------------------------------------------------


def _source(root: Path, case: Case) -> Path:
    """The case's tree, as a directory or as a tar archive beside it."""
    tree = make_tree(root, kver=case.kver, kernel=f"kernel {case.kver!r}\n".encode())
    lines = [f'{key}="{value}"' for key, value in case.os_release.items()]
    (tree / "usr/lib/os-release").write_bytes(
        ("\n".join(lines) + "\n").encode(errors="surrogateescape")
    )
    if case.archived is None:
        return tree
    archive = root.with_suffix(".tar")
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".")
        for name in case.archived:
            member = tarfile.TarInfo(name)
            member.size = len(name.encode(errors="surrogateescape"))
            tar.addfile(member, io.BytesIO(name.encode(errors="surrogateescape")))
    return archive


def _try(template: Path, work: Path, case: Case, stats: Counter[str]) -> None:
    sysroot = work / "sys"
    subprocess.run(["cp", "-a", str(template), str(sysroot)], check=True)
    source = _source(work / "tree", case)
    before, around = snapshot(sysroot), _outside(work, source)
    stats["tried"] += 1
    try:
        deploy(Sysroot(sysroot), DeployRequest(source, version=case.version, kargs=case.kargs))
    except (BootkitError, OSError) as err:
        # An OSError is what the command line reports as one line too: here only a name
        # longer than the filesystem takes may cause one.
        assert not isinstance(err, OSError) or err.errno == errno.ENAMETOOLONG, err
        stats["refused"] += 1
        stats[f"refused: {_reason(err)}"] += 1
        assert snapshot(sysroot) == before, f"a refused deploy changed the sysroot: {err}"
    else:
        stats["deployed"] += 1
        _check_deployed(Sysroot(sysroot), work)
    assert _outside(work, source) == around, "a deploy wrote outside the sysroot"


def _outside(work: Path, source: Path) -> tuple[object, ...]:
    """What lies beside the sysroot: the source tree and archive, and the names in the
    directories above it up to the fuzzer's scratch directory (the template is checked
    at the end)."""
    archive = source.read_bytes() if source.is_file() else None
    return (snapshot(work / "tree"), archive,
            *(sorted(os.listdir(d)) for d in (work, work.parent, work.parent.parent)))


def _reason(err: BootkitError | OSError) -> str:
    """The kind of value refused: 'invalid kernel version', 'invalid title', ..."""
    if isinstance(err, OSError):
        return f"{err.strerror} (OSError)"
    return re.split(r" ['\"(]|:", err.message, maxsplit=1)[0]


def _check_deployed(sr: Sysroot, work: Path) -> None:
    assert untidy(sr) == []
    deps = {d.path: d for d in sr.deployments()}
    assert len(status(sr).rows) == len(deps)
    boot = sr.boot_path
    scripts = []
    for fname, entry in bls_entries(boot):
        text = (boot / "loader/entries" / fname).read_text()
        assert parse_entry(text).render() == text
        dep = deps[kernel_params(entry.options)[2][1]]
        assert (entry.title, entry.version) == (dep.title, dep.version)
        assert entry.options == options_for(sr.config, dep)
        pasted = grub_command(blscfg_script(entry).splitlines()[0])
        assert kernel_params(grub_cmdline(pasted[2:])) == kernel_params(entry.options)
        scripts.append(f"menuentry {grubscript.quote(fname)} {{\n{blscfg_script(entry)}}}\n")
    slot = grub_slot_text(boot)
    if sr.config.bootloader == "grub":
        assert slot is not None
        menu = [line for line in slot.splitlines() if line.startswith("menuentry ")]
        assert len(menu) == len(deps)
        for line in slot.splitlines():
            if line.strip().startswith("linux "):
                words = grub_command(line)
                verbatim = options_for(sr.config, deps[kernel_params(" ".join(words[2:]))[2][1]])
                assert kernel_params(grub_cmdline(words[2:])) == kernel_params(verbatim)
        scripts.append(slot)
    # One run for all: the slot file, then what blscfg makes of each entry.
    _grub_check(work / "check.cfg", "".join(reversed(scripts)))


def _grub_check(path: Path, text: str) -> None:
    if GRUB_CHECK is None:
        return
    path.write_text(text)
    proc = subprocess.run([GRUB_CHECK, str(path)], capture_output=True, text=True, check=False)
    path.unlink()
    assert proc.returncode == 0, f"grub-script-check: {proc.stdout}{proc.stderr}\n{text}"


# --- the test ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tmpfs when there is one: each example copies a sysroot and deploys into it."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="bootkit-fuzz-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not STATS:
        return
    lines = ["", "fuzzed deploys (inputs tried, refused, deployed; refusals by reason):"]
    for bootloader, stats in STATS.items():
        lines.append(f"  {bootloader}: {stats['tried']} tried, {stats['refused']} refused, "
                     f"{stats['deployed']} deployed")
        reasons = sorted((k, v) for k, v in stats.items() if k.startswith("refused: "))
        lines += [f"    {v:4d} {k.removeprefix('refused: ')}" for k, v in reasons]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("bootloader", BOOTLOADERS)
def test_hostile_values_never_reach_a_boot_file(
    scratch: Path, bootloader: str, record_property: Callable[[str, object], None]
) -> None:
    template = scratch / bootloader / "template"
    init_sysroot(template, bootloader)
    deploy_tree(Sysroot(template), make_tree(scratch / bootloader / "first"), kargs=["quiet"])
    if bootloader == "grub":
        _grub_check(scratch / "grub.cfg", (template / "efi/grub/grub.cfg").read_text())
    pristine = snapshot(scratch / bootloader)
    stats = STATS.setdefault(bootloader, Counter())
    numbered = iter(range(1 << 30))

    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=CASES)
    def run(case: Case) -> None:
        work = scratch / bootloader / f"case-{next(numbered)}"
        work.mkdir()
        try:
            _try(template, work, case, stats)
        finally:
            shutil.rmtree(work)

    run()
    assert snapshot(scratch / bootloader) == pristine, "a deploy changed the template"
    record_property("inputs tried", stats["tried"])
    record_property("inputs refused", stats["refused"])
    record_property("inputs deployed", stats["deployed"])
    print(f"{bootloader}: {stats['tried']} inputs tried, {stats['refused']} refused")
    assert stats["deployed"] and stats["refused"], "the fuzzer must reach both outcomes"
