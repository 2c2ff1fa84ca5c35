"""Training where the hardware is: the device chosen from what the machine has, the model and batches on it,
checkpoints that hold CPU tensors whatever trained them (so they load and play on a CPU-only machine)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from improviser.model.data import load_midi_files, split
from improviser.model.generator import generate
from improviser.model.network import BachLSTM, ModelConfig, load_checkpoint, save_checkpoint
from improviser.model.train import (
    DeviceError,
    TooManyRanks,
    TrainConfig,
    _epoch_chunks,
    ahead,
    pick_device,
    train,
    validate,
)
from improviser.testing import cli, one_line_error

DATA = Path(__file__).parent / "data"
CUDA = torch.cuda.is_available()
MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
# Every device this machine has: the CPU everywhere, the GPUs where they are.
PRESENT = ["cpu"] + (["cuda"] if CUDA else []) + (["mps"] if MPS else [])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path / "cache"))


# ---- which device: from what a machine has ---------------------------------------------------------

@pytest.mark.parametrize("asked, cuda, mps, local_rank, local_world, expected", [
    ("auto", 0, False, 0, 1, "cpu"),
    ("auto", 1, False, 0, 1, "cuda:0"),
    ("auto", 0, True, 0, 1, "mps"),
    ("auto", 2, True, 0, 1, "cuda:0"),  # CUDA before MPS
    ("cpu", 4, True, 0, 1, "cpu"),
    ("cuda", 2, False, 0, 1, "cuda:0"),
    ("cuda:1", 2, False, 0, 1, "cuda:1"),
    (" CUDA:1 ", 2, False, 0, 1, "cuda:1"),
    ("mps", 0, True, 0, 1, "mps"),
    # Under torchrun: each rank its own GPU; the CPU (gloo) when there is none or when asked.
    ("auto", 4, False, 3, 4, "cuda:3"),
    ("cuda", 2, False, 1, 2, "cuda:1"),
    ("auto", 0, False, 1, 2, "cpu"),
    ("auto", 0, True, 1, 2, "cpu"),  # no distributed backend on MPS
    ("cpu", 1, False, 1, 2, "cpu"),  # a GPU machine, more ranks than GPUs, but on the CPU: fine
])
def test_the_device_follows_what_the_machine_has(asked, cuda, mps, local_rank, local_world, expected):
    assert pick_device(asked, cuda, mps, local_rank, local_world) == torch.device(expected)


@pytest.mark.parametrize("asked, cuda, mps, local_world, error, words", [
    ("gpu", 1, False, 1, DeviceError, "unknown --device 'gpu'"),
    ("cuda:x", 1, False, 1, DeviceError, "unknown --device"),
    ("cuda", 0, True, 1, DeviceError, "no CUDA GPU"),
    ("cuda:2", 2, False, 1, DeviceError, "has 2 GPUs (cuda:0..cuda:1)"),
    ("mps", 1, False, 1, DeviceError, "no Apple GPU"),
    ("mps", 0, True, 2, DeviceError, "--device cpu"),
    ("cuda:1", 2, False, 2, DeviceError, "each rank takes its own GPU"),
    ("auto", 1, False, 2, TooManyRanks, "torchrun started 2 ranks on this machine, which has 1 GPU: give "
                                        "--nproc_per_node 1"),
    ("cuda", 2, False, 8, TooManyRanks, "8 ranks on this machine, which has 2 GPUs"),
])
def test_a_device_the_machine_lacks_is_an_error_that_says_what_to_do(asked, cuda, mps, local_world, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        pick_device(asked, cuda, mps, 0, local_world)


# ---- training on each device present ------------------------------------------------------------------

def _tensors(obj, path="ckpt"):
    """(where, tensor) for every tensor in a nested checkpoint dict."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


def assert_device_free(path: Path) -> None:
    """The checkpoint, loaded as written (no map_location), holds CPU tensors only."""
    ckpt = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    found = list(_tensors(ckpt))
    assert found
    elsewhere = [where for where, t in found if t.device.type != "cpu"]
    assert not elsewhere, elsewhere[:5]


@pytest.mark.parametrize("device", PRESENT)
def test_trains_on_each_device_present_and_its_checkpoints_hold_cpu_tensors(tmp_path, device):
    train_p, valid_p = split(load_midi_files([DATA], progress=False))
    lines = []
    out = tmp_path / "m.pt"
    s = train(train_p, valid_p, out, ModelConfig(hidden=32, layers=2, dropout=0.1, head="nade", nade_hidden=16),
              TrainConfig(epochs=1, batch_size=8, copies=1), progress=False, log=lines.append, device=device)
    assert lines[0].startswith(f"training on {device}") and "float32" in lines[0]
    assert s["device"].startswith(device)
    assert next(s["model"].parameters()).device.type == device
    for written in (out, out.with_suffix(".last.pt")):
        assert_device_free(written)
    _, last = load_checkpoint(out.with_suffix(".last.pt"))
    assert last["optimizer"]["state"]  # Adam's moments are there, on the CPU
    # On a CPU-only machine: the same numbers as where it trained, and it plays.
    model, ckpt = load_checkpoint(out)
    assert validate(model, valid_p) == pytest.approx(ckpt["best_val_loss"], rel=1e-4)
    assert generate(model, 32, seed=0).notes().shape[0] > 0


@pytest.mark.parametrize("device", PRESENT)
def test_a_model_moved_to_a_device_and_back_saves_the_same_cpu_weights(tmp_path, device):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=24, layers=2, head="nade", nade_hidden=8, player_input=True, key_memory=True,
                      player_intervals=True, player_key_memory=True, key_bias=True)
    model = BachLSTM(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 5, cfg.n_inputs)
    y = torch.randint(0, cfg.states, (2, 5, cfg.n_pitches))
    want = model(x, y)
    model.to(device)
    with torch.no_grad():
        there = model(x.to(device), y.to(device))
    assert torch.allclose(there.cpu(), want, rtol=1e-4, atol=1e-3)
    save_checkpoint(tmp_path / "there.pt", model)  # saved while on the device
    assert_device_free(tmp_path / "there.pt")
    model.to(device).to("cpu").to(device)  # round trips change no weight
    save_checkpoint(tmp_path / "back.pt", model.to("cpu"))
    for name in ("there.pt", "back.pt"):
        loaded, _ = load_checkpoint(tmp_path / name)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items()), name
        assert torch.equal(loaded(x, y), want)


# ---- windows made ahead --------------------------------------------------------------------------------

def test_windows_made_ahead_in_a_thread_are_the_windows_made_in_turn():
    pieces = load_midi_files([DATA], progress=False)
    cfg = ModelConfig(hidden=16, layers=1)
    tc = TrainConfig(epochs=3, chunk_pieces=2, seq_len=32)
    in_turn = list(_epoch_chunks(pieces, cfg, tc, np.random.default_rng(1), 2, 0, 1))
    made_ahead = list(ahead(_epoch_chunks(pieces, cfg, tc, np.random.default_rng(1), 2, 0, 1), 1))
    assert len(in_turn) == len(made_ahead) == 2 * 3  # epochs 2 and 3, three chunks of two pieces each
    for a, b in zip(in_turn, made_ahead):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_an_error_while_making_windows_ahead_reaches_the_trainer_and_stopping_ends_the_thread():
    def failing():
        yield 1
        raise ValueError("bad piece")

    it = ahead(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad piece"):
        next(it)
    running = threading.active_count()
    endless = ahead(iter(range(10**9)), 2)
    assert next(endless) == 0
    endless.close()
    assert threading.active_count() == running


# ---- the command line ----------------------------------------------------------------------------------

def test_train_says_its_device_and_refuses_one_it_lacks_in_one_line(tmp_path):
    ck = tmp_path / "c.pt"
    r = cli("train", DATA, "--out", ck, "--epochs", 1, "--hidden", 16, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "training on cpu (" in r.stderr and ck.is_file()
    one_line_error(cli("train", DATA, "--out", ck, "--device", "tpu"), "unknown --device 'tpu'", "cuda:N")
    if not CUDA:
        one_line_error(cli("train", DATA, "--out", ck, "--device", "cuda"), "no CUDA GPU", "--device cpu")
        one_line_error(cli("train", DATA, "--out", ck, "--bf16"), "--bf16 is for CUDA GPUs")


@pytest.mark.parametrize("local_rank, says", [("0", True), ("1", False)])
def test_more_ranks_than_gpus_is_one_line_from_the_first_rank_and_a_failure_from_each(tmp_path, monkeypatch,
                                                                                          local_rank, says):
    # Two torchrun ranks on a machine with one GPU (as torch would see it), before any data is read.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for k, v in {"RANK": local_rank, "WORLD_SIZE": "2", "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    r = cli("train", DATA, "--out", tmp_path / "c.pt", "--epochs", 1)
    if says:
        one_line_error(r, "torchrun started 2 ranks on this machine, which has 1 GPU", "--nproc_per_node 1",
                       "--device cpu")
    else:
        assert r.exit_code == 1 and not r.stderr.strip()
    assert not (tmp_path / "c.pt").exists()


# ---- on an NVIDIA GPU ----------------------------------------------------------------------------------

@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CUDA): trains on it, in float32 and under bf16 "
                    "autocast, and loads the checkpoints on the CPU; this machine has none")
def test_a_model_trained_on_cuda_loads_and_plays_on_the_cpu(tmp_path):
    train_p, valid_p = split(load_midi_files([DATA], progress=False))
    cfg = ModelConfig(hidden=64, layers=2, dropout=0.1, head="nade", nade_hidden=32)
    losses = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}.pt"
        lines = []
        s = train(train_p, valid_p, out, cfg, TrainConfig(epochs=3, batch_size=8, lr=1e-2, bf16=bf16),
                  progress=False, log=lines.append, device="cuda")
        assert lines[0].startswith("training on cuda:0 (") and ("bf16" in lines[0]) == bf16
        assert s["device"] == "cuda:0"
        for written in (out, out.with_suffix(".last.pt")):
            assert_device_free(written)
        model, ckpt = load_checkpoint(out)
        assert validate(model, valid_p) == pytest.approx(ckpt["best_val_loss"], rel=1e-4)  # CPU as on the GPU
        assert generate(model, 32, seed=0).notes().shape[0] > 0
        losses[bf16] = ckpt["best_val_loss"]
        # Resumed on the GPU from its CPU checkpoint.
        s = train(train_p, valid_p, out, None, TrainConfig(epochs=4, batch_size=8, bf16=bf16), progress=False,
                  log=lambda s: None, resume=str(out.with_suffix(".last.pt")), device="cuda")
        assert s["epochs"] == 4
    assert all(np.isfinite(v) for v in losses.values())


def test_the_training_speed_benchmark_prints_a_row_per_model_and_device(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "train_speed.py"
    r = subprocess.run([sys.executable, str(script), "--batches", "1", "--sizes", "1x16", "2x8", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "an epoch of the shipped training = 130 batches of 32 x 128 steps" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(tuple(PRESENT))]
    assert [row[-6] for row in rows] == ["1x16", "2x8"] * len(PRESENT)
    assert all(float(row[-1]) > 0 for row in rows)
