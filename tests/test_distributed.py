"""torchrun with two CPU workers (gloo) trains one model: the ranks stay identical and the checkpoint plays."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import pytest

DATA = Path(__file__).parent / "data"


def test_torchrun_two_workers(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "IMPROVISER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    ck = tmp_path / "ddp.pt"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "improviser", "train", str(DATA),
                        "--out", str(ck), "--epochs", "2", "--hidden", "32", "--threads", "1"],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 ranks, parameters identical across ranks: yes" in r.stderr
    assert ck.is_file() and not (tmp_path / "ddp.pt.part").exists()
    out = tmp_path / "ddp.mid"
    r = subprocess.run([sys.executable, "-m", "improviser", "generate", str(out), "--checkpoint", str(ck),
                        "--seconds", "5"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert mido.MidiFile(out).length == pytest.approx(5.0, abs=1e-3)
