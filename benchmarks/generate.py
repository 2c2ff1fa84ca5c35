"""How fast is offline generation? Prints figures and a ratio against the original script's approach.

The original Bach-Music-Generator-RNN stepped a 2x256 torch LSTM once per 10 ms frame
over chord tokens: 3,000 steps for 30 s. We run that loop here, in the same process,
beside our generator (one step per 16th note, numpy stepping) on one core.

    python benchmarks/generate.py [--seconds 30] [--bpm 100] [--repeats 5] [--checkpoint P] [--previous P]

Others timed per step in the same process, in alternating blocks of 200 steps so all meet the same load:
  --previous P        another checkpoint with this code (e.g. the model before listening models:
                      ``git show cc27054:checkpoints/bach.pt > old.pt``);
  --previous-code REV the code *and* the checkpoint of git revision REV (e.g. main before the voice leading,
                      53506bb), loaded beside this code as a package of its own;
  --ablate            this checkpoint with the voice leading and the copy check turned off (what they cost).
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

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


TUNE = [72, 74, 76, 77, 79, 77, 76, 74, 72, 71, 72, 74, 76, 76, 74, 74]  # a line in quarter notes (--player)


def heard_at(step: int, frame_class, steps_per_beat: int = 4):
    """What a player sounded at ``step`` of TUNE (a note struck on each beat, held to the next), as a Frame of
    the generator's own code."""
    onset, sound = np.zeros(128, bool), np.zeros(128, bool)
    sound[TUNE[step // steps_per_beat % len(TUNE)]] = True
    onset[:] = sound if step % steps_per_beat == 0 else False
    return frame_class(onset, sound, 80)


def per_step(gens: list, n_steps: int, block: int = 200, player: bool = False) -> list[list[float]]:
    """Per-step times of each generator, in alternating blocks of ``block`` steps (so all meet the same load);
    with ``player``, each hears TUNE as it goes (what it heard is handed to its step, as the live engine does)."""
    times: list[list[float]] = [[] for _ in gens]
    for start in range(0, n_steps, block):
        for gen, out in zip(gens, times):
            frame_class = sys.modules[type(gen).__module__].Frame
            for k in range(start, start + block):
                heard = heard_at(k - 1, frame_class) if player and k else None
                t0 = time.perf_counter()
                gen.step(heard)
                out.append(time.perf_counter() - t0)
    return times


def code_at(rev: str, into: Path):
    """The improviser package and shipped checkpoint of git revision ``rev``, importable as a package of its own
    (the package imports itself relatively). Returns (its generator module, its model)."""
    root = Path(__file__).resolve().parents[1]
    blob = subprocess.run(["git", "-C", str(root), "archive", rev, "improviser", "checkpoints/bach.pt"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    name = f"improviser_{rev}"
    (into / "improviser").rename(into / name)
    sys.path.insert(0, str(into))
    layered = (into / name / "model").is_dir()  # (before the layers were folders: generator.py, model.py)
    gen_mod = importlib.import_module(f"{name}.model.generator" if layered else f"{name}.generator")
    net_mod = importlib.import_module(f"{name}.model.network" if layered else f"{name}.model")
    return gen_mod, net_mod.load_checkpoint(into / "checkpoints" / "bach.pt")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--bpm", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--previous", default=None, help="another checkpoint to time in the same run")
    ap.add_argument("--previous-code", default=None, metavar="REV",
                    help="the code and checkpoint of a git revision, timed in the same run")
    ap.add_argument("--ablate", action="store_true",
                    help="also time this checkpoint with voice leading and the copy check off")
    ap.add_argument("--steps", type=int, default=4000, help="steps timed per generator")
    ap.add_argument("--player", action="store_true",
                    help="the timed generators accompany a player's line (a note a beat) as they step")
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
    others = []  # (label, generator) timed beside ours
    if args.previous:
        others.append((args.previous, StreamingGenerator(load_checkpoint(args.previous)[0], temperature=0.9, seed=0)))
    if args.ablate:
        plain = StreamingGenerator(model, temperature=0.9, seed=0, voicing=False)
        plain.copies = None
        others.append(("this checkpoint, voice leading and copy check off", plain))
    tmp = tempfile.TemporaryDirectory() if args.previous_code else None
    if tmp is not None:
        gen_mod, old_model = code_at(args.previous_code, Path(tmp.name))
        others.append((f"code and checkpoint of {args.previous_code}",
                       gen_mod.StreamingGenerator(old_model, temperature=0.9, seed=0)))
    ours_gen = StreamingGenerator(model, temperature=0.9, seed=0)
    timed = [np.array(t) * 1e3 for t in per_step([ours_gen] + [g for _, g in others], args.steps,
                                                 player=args.player)]
    ours = timed[0]
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
    if others:
        print(f"per step, timed in alternating blocks ({args.steps} steps each"
              f"{', accompanying a line' if args.player else ''}):")
        print(f"  {'':52}{'median':>8}{'p99':>8}   ours / it")
        print(f"  {'ours':52}{np.median(ours):8.3f}{np.percentile(ours, 99):8.3f}")
        for (label, _), t in zip(others, timed[1:]):
            print(f"  {label:52}{np.median(t):8.3f}{np.percentile(t, 99):8.3f}   "
                  f"{np.median(ours) / np.median(t):.2f}x median, "
                  f"{np.percentile(ours, 99) / np.percentile(t, 99):.2f}x p99")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
