"""How long does an epoch of training take, on each device this machine has? Prints seconds per batch and per epoch.

    python benchmarks/train_speed.py [--batches 9] [--sizes 2x256 3x512] [--devices cpu cuda] [--bf16] [--threads N]

Two models of the shipped one's kind (a listening LSTM + NADE head, ``checkpoints/bach.pt``'s config): its
own size, 2x256, and 3x512. Each trains on batches of 32 windows of 128 16th-note steps, the shipped
training's shape, with train.py's own step (``batch_to``: pinned memory and a copy that does not wait on a
GPU; ``train_step``: forward, backward, clipping, Adam). The windows are random frames of the model's
inputs (5 % of the columns set, 5 % of the pitches sounding): the arithmetic does not depend on the notes.

Measured: the optimiser steps alone, after 2 unmeasured ones (allocation, cuDNN's choice of kernels), each
batch timed on its own with the device synchronised around it. s/batch is the median, the mean beside it,
s/epoch the median times an epoch's batches: on a 2-core machine that another job also uses, torch's two
threads wait for each other and single batches of the 3x512 took 1.6 s or, in bursts, 10-18 s.

An epoch is the shipped training's: 4 transposed copies of 372 chorales, 84,834 steps, cut at a random
offset into 128-step windows -- 4 x (84,834 / 128 + 372) = 4,140 windows, 130 batches. Not measured:
making the windows (on a GPU a thread makes the next chunk's while it trains; on 2 cores it is a share of
the ~2 minutes an epoch takes) and the validation pass.

The default run is short (9 batches a model and device); ``--batches 130`` times a whole epoch's worth.
``--bf16`` adds rows with bfloat16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch

from improviser.model.network import BachLSTM, ModelConfig, default_checkpoint
from improviser.model.train import TrainConfig, batch_to, describe, optimizer, pick_device, train_step

PIECES, STEPS = 372, 84_834  # the shipped model's training chorales and their 16th-note steps
WARMUP = 2


def epoch_batches(cfg: TrainConfig = TrainConfig()) -> int:
    """Batches in an epoch of the shipped training: a piece of T > seq_len steps cut at a random offset gives
    on average T / seq_len + 1 windows (228 steps: 2.77 windows, counted over the 128 offsets)."""
    windows = cfg.copies * (STEPS / cfg.seq_len + PIECES)
    return math.ceil(windows / cfg.batch_size)


def shipped_config() -> ModelConfig:
    """checkpoints/bach.pt's config, read without loading its weights; the listening 2x256 if it is absent."""
    try:
        ckpt = torch.load(default_checkpoint(), map_location="cpu", weights_only=True)
        return ModelConfig.from_dict(dict(ckpt["config"]))
    except (OSError, KeyError):
        return ModelConfig(hidden=256, layers=2, head="nade", player_input=True, key_memory=True,
                           player_intervals=True, player_key_memory=True, key_bias=True)


def windows(cfg: ModelConfig, n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """n random windows: X (n, L, inputs), Y (n, L, pitches) of states, mask (n, L) of ones."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, seq_len, cfg.n_inputs, generator=g) < 0.05).float()
    sounding = torch.rand(n, seq_len, cfg.n_pitches, generator=g) < 0.05
    y = torch.where(sounding, torch.randint(1, cfg.states, (n, seq_len, cfg.n_pitches), generator=g), 0)
    return x, y, torch.ones(n, seq_len)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def seconds_per_batch(cfg: ModelConfig, device: torch.device, n_batches: int, bf16: bool,
                      tc: TrainConfig = TrainConfig()) -> list[float]:
    """Seconds of each timed batch, the device synchronised after each."""
    torch.manual_seed(0)
    model = BachLSTM(cfg).to(device).train()
    opt = optimizer(model, tc.lr)
    x, y, m = windows(cfg, tc.batch_size * 4, tc.seq_len)
    times = []
    for _ in range(WARMUP + n_batches):
        idx = torch.randperm(len(x))[:tc.batch_size]
        sync(device)
        t0 = time.perf_counter()
        train_step(model, opt, *(batch_to(t, idx, device) for t in (x, y, m)), tc.clip, bf16)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times[WARMUP:]


def present() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=9, help="timed batches per model and device (default 9)")
    ap.add_argument("--sizes", nargs="+", default=["2x256", "3x512"], help="LAYERSxHIDDEN (default 2x256 3x512)")
    ap.add_argument("--devices", nargs="+", default=None, help="default: every device present")
    ap.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shipped = shipped_config()
    per_epoch = epoch_batches()
    print(f"torch {torch.__version__}; an epoch of the shipped training = {per_epoch} batches of "
          f"{TrainConfig.batch_size} x {TrainConfig.seq_len} steps; {args.batches} timed after {WARMUP}")
    print(f"{'device':<34} {'model':>6} {'parameters':>11} {'precision':>9} {'s/batch':>8} {'mean':>6} "
          f"{'s/epoch':>8}")
    for name in args.devices or present():
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        device = pick_device(name, cuda, "mps" in present())
        for size in args.sizes:
            layers, hidden = (int(v) for v in size.lower().split("x"))
            cfg = dataclasses.replace(shipped, layers=layers, hidden=hidden)
            for bf16 in (False, True) if args.bf16 and device.type == "cuda" else (False,):
                times = seconds_per_batch(cfg, device, args.batches, bf16)
                median = statistics.median(times)
                print(f"{describe(device):<34} {size:>6} {BachLSTM(cfg).n_params():>11,} "
                      f"{'bf16' if bf16 else 'float32':>9} {median:>8.3f} {statistics.mean(times):>6.2f} "
                      f"{median * per_epoch:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
