"""torchrun with two CPU workers (gloo) trains one model: the ranks stay identical and the checkpoint plays."""

import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from improviser.testing import torchrun_train

DATA = Path(__file__).parent / "data"


def test_torchrun_two_workers(tmp_path):
    ck = tmp_path / "ddp.pt"
    r = torchrun_train(tmp_path, DATA, "--out", ck, "--epochs", "2", "--hidden", "32", "--threads", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 ranks, parameters identical across ranks: yes" in r.stderr
    assert ck.is_file() and not (tmp_path / "ddp.pt.part").exists()
    out = tmp_path / "ddp.mid"
    env = {**os.environ, "IMPROVISER_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "improviser", "generate", str(out), "--checkpoint", str(ck),
                        "--seconds", "5"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert mido.MidiFile(out).length == pytest.approx(5.0, abs=1e-3)
