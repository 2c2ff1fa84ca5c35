"""Measuring accompany (and harmonise) through the user's path: a melody file in, a MIDI file out.

``improviser evaluate --accompaniment``. Each file of the held-out test set
(:mod:`improviser.music.melody_files`: folk tunes never trained on, written as a notation program exports
them) is given to the real command, as a user would type it; the file it writes is read back and measured
(:mod:`improviser.music.accompaniment_metrics`) beside Bach's own lower voices under his soprano in the
held-out chorales.

Reading an output back:

- the track named ``player`` is the tune as it was played; every other track with notes is its accompaniment;
- both go onto the 16th grid through the output's own tempo map (ticks / ticks-per-quarter * 4);
- the output may start later than the source (a short lead-in): the player's first onset in the output is
  aligned with the tune's first onset in the source file, and everything is moved by the same amount;
- beats and bar lines are the SOURCE file's: its time signature and where its pickup puts the first bar line
  (``read_midi``'s ``meter`` and ``bar_start``), whatever the output's conductor track says.

Measured at e0931bd with ad380d4's harmonise (``improviser evaluate --accompaniment --tunes 30 --part report``;
consonant / on top / bass / common chords / four voices / parallels per 100 changes / s a tune):
accompany 74 / 59 / 34 / 36 / 36 % / 17.3 / 1.35 s; harmonise 81 / 99 / 97 / 100 / 100 % / 0.0 / 0.37 s;
Bach (38 held-out four-part chorales) 76 / 100 / 97 / 90 / 91 % / 2.4. On part "tune": accompany 74 / 64 / 34 /
35 / 35 % / 7.9; harmonise 86 / 100 / 99 / 100 / 100 % / 0.0.

This module does not import the CLI (nothing does): the CLI hands in ``invoke``, which runs one of its own
commands in-process (typer's CliRunner) and returns the exit code and output.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import MidiFileError
from ..music.accompaniment_metrics import (
    FIGURES,
    accompaniment_counts,
    accompaniment_summary,
    bach_reference_counts,
)
from ..music.encoding import STEPS_PER_BEAT, read_midi
from ..music.melody_files import melody_files

COMMANDS = ("accompany", "harmonise")
PLAYER = "player"
BACH = "Bach (held-out chorales)"
ROW_NAMES = {"accompany": "accompany (live)", "harmonise": "harmonise"}

Invoke = Callable[[list[str]], tuple[int, str]]


def output_rolls(path: Path, steps_per_beat: int = STEPS_PER_BEAT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An output file on the step grid: (player onset, player sound, accompaniment sound), bool (T, 128) each."""
    import warnings

    import pretty_midi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = pretty_midi.PrettyMIDI(str(path))

    def step(t: float) -> int:
        return round(pm.time_to_tick(t) / pm.resolution * steps_per_beat)

    notes = [(inst.name == PLAYER, n.pitch, step(n.start), step(n.end))
             for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    n = max((e for *_, e in notes), default=0) + 1
    onset, sound, own = (np.zeros((n, 128), bool) for _ in range(3))
    for is_player, pitch, start, end in notes:
        if is_player:
            onset[start, pitch] = True
            sound[start:max(end, start + 1), pitch] = True
        else:
            own[start:max(end, start + 1), pitch] = True
    return onset, sound, own


def _shifted(a: np.ndarray, by: int, n: int) -> np.ndarray:
    """Rows of ``a`` moved ``by`` steps earlier, cut or padded with silence to ``n``."""
    out = np.zeros((n, 128), bool)
    src = a[max(0, by):max(0, by) + n]
    start = max(0, -by)
    out[start:start + len(src)] = src[:n - start]
    return out


def file_counts(source: Path, output: Path) -> dict:
    """The accompaniment counts of one output against its source melody file (module docstring)."""
    tune = read_midi(source)
    p_onset, p_sound, own = output_rolls(output, tune.steps_per_beat)
    if not p_onset.any():
        raise MidiFileError(f"{output}: no notes on a track named {PLAYER!r}")
    by = int(np.flatnonzero(p_onset.any(axis=1))[0]) - int(np.flatnonzero(tune.onset.any(axis=1))[0])
    n = len(tune)
    player = _shifted(p_onset | p_sound, by, n)
    return accompaniment_counts(player, _shifted(own, by, n), tune.time_signature, tune.bar_start,
                                tune.steps_per_beat)


def run_command(invoke: Invoke, command: str, files: Sequence[Path], folder: Path, extra: Sequence[str] = (),
                progress: bool = True) -> dict:
    """``command`` on every file, each output measured. Returns the summary with "seconds_per_tune" and
    "failed" (runs that exited non-zero; their first lines are in "errors")."""
    from tqdm import tqdm

    counts, seconds, errors = [], [], []
    for i, source in enumerate(tqdm(files, desc=command, unit="tune", disable=not progress)):
        out = folder / f"{command}-{i:03d}.mid"
        t0 = time.perf_counter()
        code, text = invoke([command, str(source), str(out), "--seed", str(i), *extra])
        seconds.append(time.perf_counter() - t0)
        if code != 0 or not out.is_file():
            errors.append(f"{source.name}: exit {code}: {(text.strip().splitlines() or [''])[-1]}")
            continue
        counts.append(file_counts(source, out))
    summary = accompaniment_summary(counts)
    return {**summary, "seconds_per_tune": float(np.mean(seconds)) if seconds else math.nan,
            "tunes": len(counts), "failed": len(errors), "errors": errors}


def bach_reference(progress: bool = False) -> dict:
    """The figures for the held-out four-part chorales: the soprano as the tune, the rest as its accompaniment."""
    from ..model.data import load_bach_chorales, split

    _, valid = split(load_bach_chorales(progress=progress, voices=True))
    counts = []
    for piece in valid:
        voices = piece.voices
        if voices is None or len(voices) != 4:
            continue
        grid = piece.grid
        counts.append(bach_reference_counts(voices, grid.time_signature, grid.bar_start, grid.steps_per_beat))
    return {**accompaniment_summary(counts), "pieces": len(counts)}


def evaluate_accompaniment(invoke: Invoke, available: Sequence[str], n_tunes: int = 30, part: str = "report",
                           seed: int = 0, extra: Sequence[str] = (), progress: bool = True) -> dict:
    """Rows: each of ``COMMANDS`` (None where not ``available``) and Bach; ``extra``: options for every command."""
    files = melody_files(n_tunes, part, seed)
    rows: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory(prefix="improviser-accompaniment-") as tmp:
        for command in COMMANDS:
            rows[ROW_NAMES[command]] = (run_command(invoke, command, [f.path for f in files], Path(tmp), extra,
                                                    progress) if command in available else None)
    rows[BACH] = bach_reference(progress)
    return {"rows": rows, "tunes": len(files), "part": part}


def format_accompaniment(result: dict) -> list[str]:
    """The table ``evaluate --accompaniment`` prints."""
    head = ["consonant", "on top", "bass", "chords", "4 voices", "par/100", "s/tune"]
    lines = [f"accompaniment of {result['tunes']} held-out tune files (part {result['part']!r}), through the "
             "commands, beside Bach's lower voices:",
             f"{'':26}" + "".join(f"{h:>10}" for h in head)]
    for name, row in result["rows"].items():
        if row is None:
            lines.append(f"{name.split()[0]}: not available")
            continue
        cells = [f"{100 * row[k]:9.0f}%" for k in FIGURES[:5]] + [f"{row['parallels_per_100']:10.1f}"]
        cells.append(f"{row['seconds_per_tune']:10.2f}" if "seconds_per_tune" in row else f"{'':10}")
        lines.append(f"{name:26}" + "".join(cells))
        if row.get("failed"):
            lines.append(f"  {row['failed']} run(s) failed, e.g. {row['errors'][0]}")
    bach = result["rows"][BACH]
    lines.append(f"(Bach: {bach['pieces']} held-out four-part chorales; figures are shares of pairs, of its notes "
                 "while the tune sounds, and of the tune's beats)")
    return lines
