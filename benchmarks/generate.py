"""How fast is offline generation? Prints figures and a ratio against the original script's approach.

The original Bach-Music-Generator-RNN stepped a 2x256 torch LSTM once per 10 ms frame
over chord tokens: 3,000 steps for 30 s. We run that loop here, in the same process,
beside our generator (one step per 16th note, numpy stepping) on one core.

    python benchmarks/generate.py [--seconds 30] [--bpm 100] [--repeats 5] [--checkpoint P] [--previous P]

--previous times another checkpoint's steps in the same run (e.g. the model before listening
models: ``git show cc27054:checkpoints/bach.pt > old.pt``), so the two compare on the same machine.
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from improviser.model.generator import StreamingGenerator, generate  # noqa: E402
from improviser.model.network import default_checkpoint, load_checkpoint  # noqa: E402


def original_approach(n_steps: int, vocab: int = 128, seed: int = 0) -> list[float]:
    """One nn.LSTM(2x256) step per 10 ms frame, sampling a chord token each time (per-step seconds)."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(vocab, 256, 2, batch_first=True).eval()
    head = torch.nn.Linear(256, vocab).eval()
    token, state, times = 0, None, []
    with torch.no_grad():
        for _ in range(n_steps):
            t0 = time.perf_counter()
            x = torch.zeros(1, 1, vocab)
            x[0, 0, token] = 1.0
            h, state = lstm(x, state)
            token = int(torch.multinomial(torch.softmax(head(h[0, -1]), -1), 1))
            times.append(time.perf_counter() - t0)
    return times


def ours_per_step(model, n_steps: int, previous=None, block: int = 200) -> tuple[list[float], list[float]]:
    """Per-step times of ``model`` (and of ``previous``, in alternating blocks of ``block`` steps, so both
    meet the same moments of the machine's load)."""
    gens = [StreamingGenerator(m, temperature=0.9, seed=0) for m in (model, previous) if m is not None]
    times: list[list[float]] = [[] for _ in gens]
    for _ in range(0, n_steps, block):
        for gen, out in zip(gens, times):
            for _ in range(block):
                t0 = time.perf_counter()
                gen.step()
                out.append(time.perf_counter() - t0)
    return times[0], times[1] if previous is not None else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--bpm", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--previous", default=None, help="another checkpoint to time in the same run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS too: one core
    model, ckpt = load_checkpoint(args.checkpoint or default_checkpoint())
    cfg = model.cfg
    n_steps = math.ceil(args.seconds * args.bpm / 60 * cfg.steps_per_beat)
    print(f"model: {cfg.layers}x{cfg.hidden} LSTM, {model.n_params():,} parameters; one core (torch threads = 1)")

    whole = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        generate(model, n_steps, temperature=0.9, seed=r)
        whole.append(time.perf_counter() - t0)
    previous = load_checkpoint(args.previous)[0] if args.previous else None
    ours, prev = (np.array(t) * 1e3 for t in ours_per_step(model, 4000, previous))
    base_steps = int(args.seconds * 100)
    t0 = time.perf_counter()
    base = np.array(original_approach(base_steps)) * 1e3
    base_total = time.perf_counter() - t0

    ours_total = float(np.median(whole))
    print(f"30 s of music = {n_steps} steps at {args.bpm:g} bpm (ours) vs {base_steps} steps of 10 ms (original)")
    print(f"{'':28}{'ours':>12}{'original':>12}{'ratio':>9}")
    print(f"{'compute for the piece (s)':28}{ours_total:12.3f}{base_total:12.3f}{base_total / ours_total:8.1f}x")
    print(f"{'per step, median (ms)':28}{np.median(ours):12.3f}{np.median(base):12.3f}"
          f"{np.median(base) / np.median(ours):8.1f}x")
    print(f"{'per step, p99 (ms)':28}{np.percentile(ours, 99):12.3f}{np.percentile(base, 99):12.3f}"
          f"{np.percentile(base, 99) / np.percentile(ours, 99):8.1f}x")
    print(f"{'faster than real time':28}{args.seconds / ours_total:11.0f}x{args.seconds / base_total:11.0f}x")
    if args.previous:
        print(f"{args.previous}: per step median {np.median(prev):.3f} ms, p99 {np.percentile(prev, 99):.3f} ms "
              f"(this checkpoint / it: {np.median(ours) / np.median(prev):.2f}x, "
              f"{np.percentile(ours, 99) / np.percentile(prev, 99):.2f}x)")


if __name__ == "__main__":
    main()
