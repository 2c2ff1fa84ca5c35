"""Held-out folk melodies from the music21 corpus, for evaluating how the improviser answers a player.

The improviser is trained on Bach chorales only. To test it on music it has never
seen, a player's phrase is taken from one of the folk-tune collections of the
music21 corpus -- ``essenFolksong``, ``oneills1850``, ``ryansMammoth``,
``airdsAirs`` and ``miscFolk`` -- which are evaluation material and must never be
used for training. Each tune becomes one monophonic line on the step grid
(4 steps per quarter), so its opening bars can be played to the improviser
(:meth:`Melody.phrase`) and compared with how the tune itself goes on
(:meth:`Melody.continuation`).

A tune is kept only if it has a time signature with denominator 4 or 8 whose bar
is a whole number of quarters (so 2/4, 3/4, 4/4, 6/8, 12/8 ...; 3/8 and 9/8 bars
cannot be expressed as whole beats of a ``Grid``), the same bar length
throughout, at least 8 whole bars, and at most one note sounding at every step.
The tune is kept in its written order: repeats are not expanded. Where an
irregular bar shifts the bar lines off the regular grid, the tune is cut at the
last regular bar line before it.

Parsing a tune takes about 0.05-0.1 s, so the chosen melodies are cached as one
.npz file in :func:`improviser.data.cache_dir`, keyed by ``n``, ``seed`` and
:data:`CACHE_VERSION`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cache import cache_dir
from .encoding import STEPS_PER_BEAT, Grid, Meter, notes_to_grid

COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
CACHE_VERSION = 3  # 2: sub-step notes no longer make a tune look polyphonic; 3: the time signature is kept
MIN_BARS = 8
PLACE_RANGE = (62, 74)  # mean pitch of a placed melody (MIDI), a comfortable soprano range
PLAYABLE = (24, 95)  # the model's pitch range
BPM = 100.0


@dataclass
class Melody:
    """One held-out tune on the step grid.

    grid: the whole tune; ``grid.steps_per_bar == bar_steps``, ``grid.bar_start`` places a pickup and
        ``grid.meter`` is the tune's own time signature (6/8 and 3/4 both have 12-step bars).
    bar_steps: steps in a bar (16 for 4/4, 12 for 3/4 and 6/8, 8 for 2/4).
    first_bar: the step at which the first full bar starts (the pickup's length; 0 without one).
    """

    name: str
    grid: Grid
    bar_steps: int
    first_bar: int

    @property
    def collection(self) -> str:
        """The corpus collection the tune comes from (the first part of its name)."""
        return self.name.split("/", 1)[0]

    @property
    def meter(self) -> Meter:
        """The tune's time signature (its first, where it changes to another of the same bar length)."""
        return self.grid.time_signature

    @property
    def whole_bars(self) -> int:
        return (len(self.grid) - self.first_bar) // self.bar_steps

    def phrase(self, bars: int = 4) -> Grid:
        """The opening ``bars`` full bars, with any pickup before them."""
        return self._slice(0, self._bar_line(bars), self.grid.bar_start)

    def continuation(self, bars: int = 4, after: int | None = None) -> Grid:
        """The ``bars`` bars that follow ``phrase(after)`` (``after`` defaults to ``bars``): the tune's own answer.

        It starts on a bar line. A note held over from the phrase sounds at its first step without an onset.
        """
        after = bars if after is None else after
        return self._slice(self._bar_line(after), self._bar_line(after + bars), 0)

    def _bar_line(self, bars: int) -> int:
        if bars < 0 or bars > self.whole_bars:
            raise ValueError(f"{self.name}: has {self.whole_bars} whole bars, cannot reach bar line {bars}")
        return self.first_bar + bars * self.bar_steps

    def _slice(self, start: int, end: int, bar_start: int) -> Grid:
        g = self.grid
        vel = None if g.velocity is None else g.velocity[start:end]
        return replace(g, onset=g.onset[start:end], sound=g.sound[start:end], velocity=vel, bar_start=bar_start)


def place(melody: Melody, rng: np.random.Generator) -> Melody:
    """The tune in a random key (a shift of -6..+5 semitones), then moved by octaves so its mean pitch
    (over notes) lies in ``PLACE_RANGE``. Raises ValueError if a note would then leave MIDI 24..95."""
    notes = melody.grid.notes()
    shift = int(rng.integers(-6, 6))
    if notes.size == 0:
        return melody
    mean = float(notes[:, 0].mean()) + shift
    shift += 12 * int(np.ceil((PLACE_RANGE[0] - mean) / 12))  # lands in [62, 74)
    lo, hi = int(notes[:, 0].min()) + shift, int(notes[:, 0].max()) + shift
    if lo < PLAYABLE[0] or hi > PLAYABLE[1]:
        raise ValueError(f"{melody.name}: spans MIDI {lo}..{hi} once placed, outside {PLAYABLE[0]}..{PLAYABLE[1]}")
    return replace(melody, grid=melody.grid.transpose(shift))


# ---- parsing ---------------------------------------------------------------------------------------

def _corpus_root():
    try:
        import music21
        from music21 import corpus
    except ImportError:
        raise DataError("the held-out melodies come from the music21 corpus: pip install music21") from None
    return Path(music21.__file__).parent / "corpus", corpus


def _candidates() -> dict[str, list[tuple[Path, int | None]]]:
    """Every tune of the five collections as (file, X: reference number or None), in a fixed order."""
    root, corpus = _corpus_root()
    by_collection: dict[str, list[tuple[Path, int | None]]] = {c: [] for c in COLLECTIONS}
    for p in sorted(Path(p) for p in corpus.getPaths()):
        try:
            collection = p.relative_to(root).parts[0]
        except ValueError:  # a file of a user's local corpus
            continue
        if collection not in by_collection or p.suffix.lower() != ".abc":
            continue
        numbers = re.findall(r"^X:\s*(\d+)", p.read_text(encoding="utf-8", errors="replace"), re.M)
        unique = list(dict.fromkeys(int(x) for x in numbers))
        by_collection[collection] += [(p, k) for k in unique] or [(p, None)]
    return by_collection


def parse_tune(path: str | os.PathLike, number: int | None = None, name: str | None = None) -> Melody | None:
    """One tune of an .abc file (``number``: its X: reference number) -> Melody; None if it is not usable."""
    _corpus_root()  # a DataError if music21 is missing
    from music21 import converter, harmony, meter

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = converter.parse(str(path), number=number, forceSource=True, storePickle=False)
    if hasattr(score, "scores"):  # an Opus: the number was not found on its own
        return None
    parts = list(score.parts) if score.parts else [score]
    part = parts[0].stripTies()

    signatures = list(part.recurse().getElementsByClass(meter.TimeSignature))
    if not signatures or any(ts.denominator not in (4, 8) for ts in signatures):
        return None
    bar_q = {float(ts.barDuration.quarterLength) for ts in signatures}
    if len(bar_q) != 1 or not float(next(iter(bar_q))).is_integer():
        return None
    bar_q = next(iter(bar_q))
    bar_steps = round(bar_q) * STEPS_PER_BEAT
    meter = Meter(int(signatures[0].numerator), int(signatures[0].denominator))

    measures = [(float(m.offset), float(m.duration.quarterLength)) for m in part.getElementsByClass("Measure")]
    full = [off for off, dur in measures if abs(dur - bar_q) < 1e-6]
    if not full or full[0] >= bar_q:
        return None  # no full bar, or more than a pickup before the first one
    first_q = full[0]
    end_q = float(part.highestTime)
    for off in full:
        if abs((off - first_q) / bar_q - round((off - first_q) / bar_q)) > 1e-6:
            end_q = first_q + bar_q * np.floor((off - first_q) / bar_q)  # an irregular bar: cut before it
            break

    first_bar, n_steps = first_q * STEPS_PER_BEAT, round(end_q * STEPS_PER_BEAT)
    if not first_bar.is_integer() or (n_steps - first_bar) // bar_steps < MIN_BARS:
        return None
    first_bar = int(first_bar)

    line = []  # (start, end, top pitch) in quarters
    for el in part.flatten().notes:
        if isinstance(el, harmony.Harmony) or el.duration.isGrace or el.duration.quarterLength <= 0:
            continue
        start_q = float(el.offset)
        if start_q < end_q - 1e-6:
            end = min(start_q + float(el.duration.quarterLength), end_q)
            line.append((start_q, end, max(p.midi for p in el.pitches)))
    line.sort()
    if not line or any(b[0] < a[1] - 1e-6 for a, b in zip(line, line[1:])):
        return None  # no notes, or notes overlapping: more than one line
    # Onto the grid. Notes shorter than a step (32nds, 16th triplets) can round onto the step of
    # the next note: the first note on a step is kept, and a note ends where the next one starts.
    starts = np.floor(np.array([n[0] for n in line]) * STEPS_PER_BEAT + 0.5).astype(int)
    ends = np.floor(np.array([n[1] for n in line]) * STEPS_PER_BEAT + 0.5).astype(int)
    pitch = np.array([n[2] for n in line])
    keep = np.r_[True, starts[1:] > starts[:-1]]
    starts, ends, pitch = starts[keep], ends[keep], pitch[keep]
    ends = np.maximum(np.minimum(ends, np.r_[starts[1:], n_steps]), starts + 1)
    if pitch.min() < 0 or pitch.max() > 127:
        return None
    onset, sound, _ = notes_to_grid(pitch, starts, ends, n_steps)
    grid = Grid(onset, sound, STEPS_PER_BEAT, bar_steps // STEPS_PER_BEAT, BPM, None, (-first_bar) % bar_steps, meter)
    if name is None:
        title = score.metadata.title if score.metadata is not None and score.metadata.title else ""
        name = f"{path.parent.name}/{path.name}" + (f"#{number}" if number is not None else "") + f" {title}".rstrip()
    return Melody(name, grid, bar_steps, first_bar)


def _choose(n: int, seed: int, progress: bool) -> list[Melody]:
    """Round robin over the collections, each in its own seeded order, so each gives an equal share."""
    from tqdm import tqdm

    candidates = _candidates()
    root, _ = _corpus_root()
    rng = np.random.default_rng(seed)
    queues = {c: [candidates[c][i] for i in rng.permutation(len(candidates[c]))] for c in COLLECTIONS}
    position = dict.fromkeys(COLLECTIONS, 0)
    chosen: list[Melody] = []
    with tqdm(total=n, desc="parsing held-out melodies", unit="tune", disable=not progress) as bar:
        while len(chosen) < n and any(position[c] < len(queues[c]) for c in COLLECTIONS):
            for c in COLLECTIONS:
                while len(chosen) < n and position[c] < len(queues[c]):
                    path, number = queues[c][position[c]]
                    position[c] += 1
                    try:
                        melody = parse_tune(path, number)
                    except Exception:  # music21 raises many kinds of errors on odd abc; skip the tune
                        melody = None
                    if melody is not None:
                        chosen.append(melody)
                        bar.update(1)
                        break
    if len(chosen) < n:
        raise DataError(f"only {len(chosen)} usable held-out melodies in the music21 corpus ({n} asked for)")
    return chosen


# ---- the cache -------------------------------------------------------------------------------------

def _save(path: Path, melodies: list[Melody]) -> None:
    notes = [m.grid.notes()[:, :3] for m in melodies]
    meta = [[len(m.grid), m.bar_steps, m.first_bar, m.grid.bar_start, m.meter.numerator, m.meter.denominator]
            for m in melodies]
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, names=np.array([m.name for m in melodies]),
                        notes=np.concatenate(notes).astype(np.int32),
                        counts=np.array([len(x) for x in notes], np.int64), meta=np.array(meta, np.int64))
    os.replace(tmp, path)


def _load(path: Path) -> list[Melody]:
    with np.load(path, allow_pickle=False) as a:
        names, notes, counts, meta = a["names"].tolist(), a["notes"], a["counts"], a["meta"]
    out = []
    for name, chunk, (n_steps, bar_steps, first_bar, bar_start, numerator, denominator) in zip(
            names, np.split(notes, np.cumsum(counts)[:-1]), meta.tolist()):
        onset, sound, _ = notes_to_grid(chunk[:, 0], chunk[:, 1], chunk[:, 2], n_steps)
        grid = Grid(onset, sound, STEPS_PER_BEAT, bar_steps // STEPS_PER_BEAT, BPM, None, bar_start,
                    Meter(numerator, denominator))
        out.append(Melody(name, grid, bar_steps, first_bar))
    return out


def load_heldout_melodies(n: int = 60, seed: int = 0, progress: bool = False) -> list[Melody]:
    """``n`` tunes picked (deterministically for a ``seed``) evenly over the five held-out collections,
    each a monophonic line on the step grid. Parsed once, then read from the cache."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cached = cache_dir() / f"heldout-melodies-n{n}-s{seed}-v{CACHE_VERSION}.npz"
    if cached.is_file():
        try:
            return _load(cached)
        except Exception:
            cached.unlink(missing_ok=True)  # a damaged cache file is rebuilt
    melodies = _choose(n, seed, progress)
    _save(cached, melodies)
    return melodies
