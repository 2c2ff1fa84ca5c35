"""Write a batch of MIDI files with different seeds, tempos and temperatures.

    python examples/batch_generate.py out_folder/ [--count 8] [--seconds 30]
"""

import argparse
import math
from pathlib import Path

from improviser import generate, load_checkpoint
from improviser.encoding import grid_to_timed_notes, write_midi
from improviser.model import default_checkpoint

ap = argparse.ArgumentParser()
ap.add_argument("folder", type=Path)
ap.add_argument("--count", type=int, default=8)
ap.add_argument("--seconds", type=float, default=30.0)
args = ap.parse_args()
args.folder.mkdir(parents=True, exist_ok=True)

model, _ = load_checkpoint(default_checkpoint())
for i in range(args.count):
    bpm = 72 + 12 * (i % 4)  # 72, 84, 96, 108 bpm
    temperature = (0.7, 0.9, 1.1)[i % 3]
    steps = math.ceil(args.seconds * bpm / 60 * model.cfg.steps_per_beat)
    grid = generate(model, steps, temperature=temperature, note_stability=2, seed=i)
    path = args.folder / f"bach-{i:02d}-{bpm}bpm-t{temperature}.mid"
    write_midi(path, {"improviser": grid_to_timed_notes(grid, bpm)}, bpm, length=args.seconds)
    print(path)
