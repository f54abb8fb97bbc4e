"""The command table: every command is reachable, and loading one does not load the rest."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from bootkit.cli import COMMAND_MODULES, main


def test_table_matches_each_modules_commands() -> None:
    for family in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"bootkit.cli.{family}")
        declared = {c.name for c in module.COMMANDS}
        listed = {name for name, f in COMMAND_MODULES.items() if f == family}
        assert declared == listed, family


def test_every_command_has_help() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for name in COMMAND_MODULES:
        assert name in top.output
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_status_does_not_load_signing_or_elf_code() -> None:
    probe = (
        "import sys\n"
        "from bootkit.cli import main\n"
        "try:\n"
        "    main(['status', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('cryptography', 'elftools', 'bootkit.diskimage') if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "heavy="
