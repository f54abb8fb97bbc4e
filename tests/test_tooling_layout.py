"""The product, the dev tooling and the tests stay apart.

`bootkit` never imports `bootkit_testing`. Nothing under bootkit/, bootkit_testing/,
benchmarks/ or scripts/ imports test code (`tests`, or a name that pytest's
pythonpath makes importable from it, such as `support`), nor changes the import
path to reach it: the tooling is an installed package, run as
`python -m bootkit_testing.<module>`.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("bootkit", "bootkit_testing", "benchmarks", "scripts")
PRODUCT = "bootkit"
TOOLING = "bootkit_testing"
# A shell line that runs a module (`python -m name`) or changes where Python imports from.
_SHELL_MODULE = re.compile(r"\s-m\s+([A-Za-z_][\w.]*)")
_SHELL_PATH = re.compile(r"\bPYTHONPATH\b|\bsys\.path\b")


@functools.cache
def names_of_test_code() -> frozenset[str]:
    """Top-level names that are test code: `tests`, and what pytest's pythonpath exposes."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {"tests"}
    for entry in config["tool"]["pytest"]["ini_options"].get("pythonpath", []):
        for path in (REPO / entry).iterdir():
            if path.suffix == ".py" or (path / "__init__.py").is_file():
                names.add(path.stem)
    return frozenset(names)


def top_level_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def _touches_import_path(node: ast.AST) -> bool:
    match node:
        case ast.Attribute(value=ast.Name(id="sys"), attr="path"):
            return True
        case ast.ImportFrom(module="sys", names=names):
            return any(alias.name == "path" for alias in names)
        case ast.Constant(value="PYTHONPATH"):
            return True
    return False


def import_path_changes(tree: ast.AST) -> Iterator[int]:
    """Lines that touch sys.path or PYTHONPATH."""
    for node in ast.walk(tree):
        if _touches_import_path(node):
            yield getattr(node, "lineno", 0)


def python_problems(source: str, name: str, forbidden: frozenset[str]) -> list[str]:
    tree = ast.parse(source, name)
    problems = [f"{name}:{line}: imports {module}"
                for line, module in top_level_imports(tree) if module in forbidden]
    problems += [f"{name}:{line}: changes the import path" for line in import_path_changes(tree)]
    return problems


def shell_problems(source: str, name: str, forbidden: frozenset[str]) -> list[str]:
    problems = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.startswith("#!") else ""
        for module in _SHELL_MODULE.findall(code):
            if module.partition(".")[0] in forbidden:
                problems.append(f"{name}:{number}: runs {module}")
        if _SHELL_PATH.search(code):
            problems.append(f"{name}:{number}: changes the import path")
    return problems


def forbidden_for(path: Path) -> frozenset[str]:
    top = path.relative_to(REPO).parts[0]
    return names_of_test_code() | ({TOOLING} if top == PRODUCT else frozenset())


def checked_files() -> Iterator[Path]:
    for top in CHECKED:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path


def problems_in(path: Path) -> list[str]:
    name = str(path.relative_to(REPO))
    data = path.read_bytes()
    if path.suffix == ".py":
        return python_problems(data.decode(), name, forbidden_for(path))
    if data.startswith(b"#!") and b"sh" in data.split(b"\n", 1)[0]:
        return shell_problems(data.decode(errors="replace"), name, forbidden_for(path))
    return []


def test_product_tooling_and_scripts_import_no_test_code() -> None:
    files = list(checked_files())
    assert any(p.suffix == ".py" and p.parts[-2] == TOOLING for p in files)
    assert any(p.parent.name == "scripts" for p in files)
    problems = [problem for path in files for problem in problems_in(path)]
    assert problems == []


def test_test_code_names_come_from_the_pytest_path() -> None:
    names = names_of_test_code()
    assert {"tests", "support", "conftest"} <= names
    assert PRODUCT not in names and TOOLING not in names


@pytest.mark.parametrize("source, found", [
    ("import tests.qemu.harness\n", "imports tests"),
    ("from tests.support import helpers\n", "imports tests"),
    ("from support.helpers import make_tree\n", "imports support"),
    ("import sys\nsys.path.insert(0, 'x')\n", "changes the import path"),
    ("from sys import path\n", "changes the import path"),
    ("import os\nos.environ['PYTHONPATH'] = 'x'\n", "changes the import path"),
])
def test_python_checks_find_what_they_look_for(source: str, found: str) -> None:
    problems = python_problems(source, "x.py", names_of_test_code())
    assert len(problems) == 1 and found in problems[0]


@pytest.mark.parametrize("source", ["from bootkit_testing import qemu\n",
                                    "import bootkit_testing.harness as h\n"])
def test_the_product_may_not_import_the_tooling(source: str) -> None:
    path = REPO / PRODUCT / "x.py"
    expected = ["x.py:1: imports bootkit_testing"]
    assert python_problems(source, "x.py", forbidden_for(path)) == expected
    assert python_problems(source, "x.py", forbidden_for(REPO / TOOLING / "x.py")) == []


def test_tooling_may_import_itself_and_the_product() -> None:
    source = "from .harness import Disk\nfrom bootkit.cli import main\nimport bootkit_testing\n"
    assert python_problems(source, "x.py", forbidden_for(REPO / TOOLING / "x.py")) == []


def test_shell_checks_find_what_they_look_for() -> None:
    source = ("#!/bin/sh\n# python -m tests.qemu.demo in a comment is fine\n"
              "exec python3 -m tests.qemu.demo\nPYTHONPATH=. python3 -m bootkit_testing.demo\n"
              "python3 -m venv .venv\n")
    assert shell_problems(source, "s", names_of_test_code()) == [
        "s:3: runs tests.qemu.demo", "s:4: changes the import path"]


def test_tooling_imports_from_any_directory(tmp_path: Path) -> None:
    """The editable install, not the current directory, makes bootkit_testing importable."""
    kernel = tmp_path / "kernel"
    (kernel / "boot").mkdir(parents=True)
    (kernel / "boot/vmlinuz-6.1.0-1-amd64").write_bytes(b"kernel")
    (kernel / "lib/modules/6.1.0-1-amd64").mkdir(parents=True)
    env = {**os.environ, "BOOTKIT_TEST_KERNEL_DIR": str(kernel)}
    # -I: no current directory, script directory or PYTHON* variables on the path.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", "import bootkit_testing; print(bootkit_testing.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == REPO / TOOLING / "__init__.py"
    proc = subprocess.run([sys.executable, "-I", "-m", f"{TOOLING}.kernel"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, str(kernel)), proc.stderr
