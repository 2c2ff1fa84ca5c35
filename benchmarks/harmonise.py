"""How long does `improviser harmonise` take? Times its core (``improviser.model.harmonise.harmonise``, the model
already loaded) on 30 seconds of melody -- Ode to Joy in D, repeated, at 100 bpm -- on one thread, as the CLI runs
it, and prints seconds per 30-second melody (the median of --repeats). Target: 5 s or less.

    python benchmarks/harmonise.py [--seconds 30] [--bpm 100] [--repeats 3] [--checkpoint P]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from improviser.model.harmonise import harmonise  # noqa: E402
from improviser.model.network import default_checkpoint, load_checkpoint  # noqa: E402
from improviser.music.encoding import Grid, Meter, notes_to_grid  # noqa: E402

# Ode to Joy in D: (MIDI pitch, quarter notes), 32 beats.
ODE = [(66, 1), (66, 1), (67, 1), (69, 1), (69, 1), (67, 1), (66, 1), (64, 1), (62, 1), (62, 1), (64, 1), (66, 1),
       (66, 1.5), (64, 0.5), (64, 2),
       (66, 1), (66, 1), (67, 1), (69, 1), (69, 1), (67, 1), (66, 1), (64, 1), (62, 1), (62, 1), (64, 1), (66, 1),
       (64, 1.5), (62, 0.5), (62, 2)]


def melody(seconds: float, bpm: float, steps_per_beat: int) -> Grid:
    """Ode to Joy over and over for ``seconds`` at ``bpm``, in 4/4, on the step grid."""
    n_steps = round(seconds * bpm / 60 * steps_per_beat)
    pitch, start, end, t = [], [], [], 0
    while t < n_steps:
        for p, beats in ODE:
            length = round(beats * steps_per_beat)
            pitch.append(p)
            start.append(t)
            end.append(min(t + length, n_steps))
            t += length
            if t >= n_steps:
                break
    onset, sound, velocity = notes_to_grid(pitch, start, end, n_steps, velocity=np.full(len(pitch), 80))
    return Grid(onset, sound, steps_per_beat, 4, bpm, velocity, 0, Meter(4, 4), ())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--bpm", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(1)  # as the CLI does
    model, _ = load_checkpoint(args.checkpoint or default_checkpoint())
    tune = melody(args.seconds, args.bpm, model.cfg.steps_per_beat)
    harmonise(model, tune, seed=0)  # warm up (torch's first calls, the voicings' cache)
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        h = harmonise(model, tune, seed=i)
        times.append(time.perf_counter() - t0)
    per_30 = statistics.median(times) * 30.0 / args.seconds
    print(f"{args.seconds:g} s of melody at {args.bpm:g} bpm ({len(h.chords)} beats), one thread: "
          f"{', '.join(f'{t:.2f}' for t in times)} s; median {per_30:.2f} s per 30-second melody (target <= 5 s)")


if __name__ == "__main__":
    main()
