"""The UAPI version comparison: the specification's examples, and systemd's own implementation."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest

from bootkit.formats.versioncmp import compare_versions, version_key

# (a, expected sign of compare(a, b), b), from the UAPI Version Format Specification.
SPEC_EXAMPLES = [
    ("11", 0, "11"),
    ("systemd-123", 0, "systemd-123"),
    ("bar-123", -1, "foo-123"),
    ("123a", 1, "123"),
    ("123.a", 1, "123"),
    ("123.a", -1, "123.b"),
    ("123a", 1, "123.a"),
    ("11α", 0, "11β"),
    ("A", -1, "a"),
    ("", -1, "0"),
    ("0.", 1, "0"),
    ("0.0", 1, "0"),
    ("0", 1, "~"),
    ("", 1, "~"),
    ("1_", 0, "1"),
    ("_1", 0, "1"),
    ("1_", -1, "1.2"),
    ("1_2_3", 1, "1.3.3"),
    ("1+", 0, "1"),
    ("+1", 0, "1"),
    ("1+", -1, "1.2"),
    ("1+2+3", 1, "1.3.3"),
    ("1.2~rc1", -1, "1.2"),
    ("4.5^p1", 1, "4.5"),
    ("4.5^p1", -1, "4.5.1"),
    # More of the same rules.
    ("00123", 0, "123"),
    ("1.2-3", -1, "1.2.1-1"),
    ("5.2~rc1", -1, "5.2~rc2"),
    ("1.10", 1, "1.9"),
    ("abc", -1, "abcde"),
]


@pytest.mark.parametrize(("a", "sign", "b"), SPEC_EXAMPLES)
def test_spec_examples(a: str, sign: int, b: str) -> None:
    assert compare_versions(a, b) == sign
    assert compare_versions(b, a) == -sign


def test_sorting_with_version_key() -> None:
    versions = ["1.2", "1.2~rc1", "1.10", "1.2^p1", "1.9", "1.2.1", "1.2-1"]
    assert sorted(versions, key=version_key) == [
        "1.2~rc1",
        "1.2",
        "1.2-1",
        "1.2^p1",
        "1.2.1",
        "1.9",
        "1.10",
    ]


# Characters that exercise every rule: digits, letters of both cases, each separator,
# characters that are not version characters at all. ASCII only: systemd-analyze looks
# at a byte right after '~' as a signed char, while systemd-boot (UCS-2) and bootkit see
# an unsigned code point, so the two disagree on a non-ASCII character in that place.
_ALPHABET = "0012789aAbzZ" + ".-^~" + "_+ ,"


def _random_version(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 7)))


_SYSTEMD_RESULT = {0: 0, 11: 1, 12: -1}  # exit status of `systemd-analyze compare-versions`


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_agrees_with_systemd() -> None:
    seed = int(os.environ.get("BOOTKIT_TEST_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    pairs = []
    for _ in range(100):
        a = _random_version(rng)
        # Half of the pairs share a prefix, where the interesting rules decide.
        b = a[: rng.randint(0, len(a))] + _random_version(rng) if rng.random() < 0.5 else ""
        pairs.append((a, b or _random_version(rng)))
    mismatches = []
    # Several systemd-analyze processes at a time: starting one costs more than its work.
    for start in range(0, len(pairs), 16):
        batch = pairs[start : start + 16]
        procs = [
            subprocess.Popen(
                ["systemd-analyze", "compare-versions", "--", a, b],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for a, b in batch
        ]
        for (a, b), proc in zip(batch, procs, strict=True):
            out, err = proc.communicate()
            if proc.returncode not in _SYSTEMD_RESULT:
                pytest.fail(f"systemd-analyze compare-versions {a!r} {b!r}: {err!r}")
            if compare_versions(a, b) != _SYSTEMD_RESULT[proc.returncode]:
                mismatches.append((a, b, out.decode().strip()))
    assert not mismatches, f"seed {seed}: disagrees with systemd on {mismatches}"
