"""The installed package: Lava importable, the `medqk` command, and no generic top-level names."""
import subprocess
import sys
from pathlib import Path

import pytest

from medqk.defaults import default_checkpoint_path


def run_python(code: str, cwd="/tmp") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_lava_imports_after_install():
    # In a fresh interpreter: the Python 3.11 fix must come from the install, not from this process.
    result = run_python("import lava.magma.core.run_configs, lava.proc.conv.process; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["cli", "convert", "deploy", "energy"])
def test_no_generic_top_level_names_are_importable_outside_the_checkout(name):
    result = run_python(f"import {name}")
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("name", ["medqk.cli", "medqk.convert", "medqk.deploy", "medqk.energy", "medqk.data"])
def test_subpackages_import_under_medqk_outside_the_checkout(name):
    result = run_python(f"import {name}")
    assert result.returncode == 0, result.stderr


def test_the_medqk_console_command_runs():
    command = Path(sys.executable).parent / "medqk"
    result = subprocess.run([str(command), "--help"], cwd="/tmp", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "eval" in result.stdout


def test_the_embedded_default_ships_with_the_package():
    path = default_checkpoint_path()
    assert path.is_file()
    assert path.stat().st_size < 3 * 2**20
