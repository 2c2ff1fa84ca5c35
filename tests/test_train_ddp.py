"""torchrun on the CPU (gloo), asked for by --device cpu as on a GPU machine: rank 0 validates as one process
would, keeps the best epoch, and writes checkpoints that hold CPU tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from improviser.model.data import load_midi_files, split
from improviser.model.network import load_checkpoint
from improviser.model.train import validate
from improviser.testing import torchrun_train

DATA = Path(__file__).parent / "data"


def test_torchrun_on_the_cpu_validates_and_chooses_the_best_epoch_as_one_process(tmp_path):
    ck = tmp_path / "ddp.pt"
    r = torchrun_train(tmp_path, DATA, "--out", ck, "--epochs", "3", "--patience", "99", "--hidden", "32",
                       "--threads", "1", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("training on cpu (1 thread), float32; 2 ranks (gloo)") == 1  # rank 0 alone says it
    assert r.stderr.count("epoch 3: train") == 1
    assert "2 ranks, parameters identical across ranks: yes" in r.stderr

    model, best = load_checkpoint(ck)
    _, last = load_checkpoint(ck.with_suffix(".last.pt"))
    history = last["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # The best epoch is the one with the lowest validation loss, as one process chooses it...
    chosen = min(history, key=lambda h: h["val_loss"])
    assert best["epoch"] == chosen["epoch"] and best["best_val_loss"] == chosen["val_loss"]
    # ...and its loss is what one process measures on the whole validation split with the saved weights.
    _, valid_p = split(load_midi_files([DATA], progress=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert validate(model, valid_p) == pytest.approx(best["best_val_loss"], rel=1e-6)
    finally:
        torch.set_num_threads(threads)
    # Loaded as written (no map_location): Adam's moments are CPU tensors.
    raw = torch.load(ck.with_suffix(".last.pt"), weights_only=True)
    assert all(t.device.type == "cpu" for t in raw["optimizer"]["state"][0].values())
