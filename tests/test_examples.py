"""The Python examples run as shipped and do what they say."""

import subprocess
import sys
from pathlib import Path

import mido
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_python_api_example_plays_a_bar():
    r = run(EXAMPLES / "python_api.py")
    assert r.returncode == 0, r.stderr
    steps = [line for line in r.stdout.splitlines() if line.startswith("step")]
    assert len(steps) == 16
    assert sum("struck -" not in line for line in steps) >= 4  # it strikes notes in most beats


def test_batch_example_writes_its_files(tmp_path):
    r = run(EXAMPLES / "batch_generate.py", tmp_path, "--count", "3", "--seconds", "5")
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.glob("*.mid"))
    assert len(files) == 3
    for f in files:
        assert mido.MidiFile(f).length == pytest.approx(5.0, abs=1e-3)
    assert len({f.read_bytes() for f in files}) == 3
