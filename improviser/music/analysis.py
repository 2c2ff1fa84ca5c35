"""Musical measurements on grids: key, profiles against a reference, and verbatim copies of training data.

All pure numpy. Used by ``improviser evaluate`` and by tests that check what the
improviser plays (e.g. that it answers in the player's key).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

import numpy as np

from .encoding import Grid

# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
LENGTH_BINS = [1, 2, 3, 4, 6, 8, 12, 16]  # note lengths in steps; longer ones go in the last bin


def pitch_class_histogram(grid: Grid, weight: str = "duration") -> np.ndarray:
    """How much each pitch class sounds (by steps sounding, or by onsets), normalised to sum 1. Shape (12,)."""
    arr = grid.sound if weight == "duration" else grid.onset
    per_pitch = arr.sum(axis=0).astype(float)
    hist = np.array([per_pitch[pc::12].sum() for pc in range(12)])
    return hist / max(hist.sum(), 1e-12)


def estimate_key(grid: Grid) -> tuple[int, str, float]:
    """Krumhansl-Schmuckler key finding -> (tonic pitch class, 'major'|'minor', correlation)."""
    return key_of_histogram(pitch_class_histogram(grid))


_PROFILES = np.array([np.roll(p, t) for p in (MAJOR, MINOR) for t in range(12)])  # (24, 12): C major .. B minor
_PROFILES_Z = (_PROFILES - _PROFILES.mean(axis=1, keepdims=True)) / _PROFILES.std(axis=1, keepdims=True)


def key_of_histogram(hist: np.ndarray) -> tuple[int, str, float]:
    """The key whose Krumhansl-Kessler profile best fits a pitch-class histogram (12,) -> (tonic, mode, r).

    Any non-negative weights will do (durations, onsets, a decayed running count); a flat or
    empty histogram gives C major with r = 0.
    """
    hist = np.asarray(hist, np.float64)
    sd = hist.std()
    if sd == 0:
        return 0, "major", 0.0
    r = _PROFILES_Z @ ((hist - hist.mean()) / sd) / 12.0
    best = int(np.argmax(r))
    return best % 12, ("major", "minor")[best // 12], float(r[best])


# Pitch classes above the tonic that belong to a key: the major scale; in minor the natural minor
# with the raised sixth and seventh (melodic and harmonic minor), as Bach writes it.
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 9, 10, 11)}


def in_key(tonic: int, mode: str) -> np.ndarray:
    """bool (12,): the pitch classes of the key (see SCALE_STEPS)."""
    out = np.zeros(12, bool)
    out[[(tonic + s) % 12 for s in SCALE_STEPS[mode]]] = True
    return out


_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MODES = {"": "major", "maj": "major", "major": "major", "m": "minor", "min": "minor", "minor": "minor"}


def parse_key(name: str) -> tuple[int, str]:
    """'F# major', 'Gb major', 'd minor', 'Eb' (major), 'c#m', 'Bb min' -> (tonic pitch class, mode).

    Raises ValueError for anything else.
    """
    text = name.strip().replace("\u266f", "#").replace("\u266d", "b")
    m = re.fullmatch(r"([A-Ga-g])([#b]?)\s*(major|minor|maj|min|m)?", text, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a key name: {name!r} (expected e.g. 'F# major' or 'Bb minor')")
    tonic = _LETTERS[m.group(1).upper()] + m.group(2).count("#") - m.group(2).count("b")
    return tonic % 12, _MODES[(m.group(3) or "").lower()]


def key_name(tonic: int, mode: str) -> str:
    return f"{NOTE_NAMES[tonic]} {mode}"


def key_correlation(grid: Grid, tonic: int, mode: str) -> float:
    """How well the music fits one given key (Pearson r against its profile)."""
    profile = MAJOR if mode == "major" else MINOR
    return float(np.corrcoef(pitch_class_histogram(grid), np.roll(profile, tonic))[0, 1])


def note_length_histogram(grid: Grid) -> np.ndarray:
    """Share of notes per length bin (LENGTH_BINS, in steps). Shape (len(LENGTH_BINS),)."""
    n = grid.notes()
    lengths = n[:, 2] - n[:, 1]
    idx = np.searchsorted(LENGTH_BINS, np.minimum(lengths, LENGTH_BINS[-1]))
    hist = np.bincount(idx, minlength=len(LENGTH_BINS)).astype(float)
    return hist / max(hist.sum(), 1e-12)


def voices_histogram(grid: Grid, most: int = 8) -> np.ndarray:
    """Share of steps with 0, 1, ..., ``most``+ sounding pitches. Shape (most + 1,)."""
    v = np.minimum(grid.sound.sum(axis=1), most)
    hist = np.bincount(v, minlength=most + 1).astype(float)
    return hist / max(hist.sum(), 1e-12)


def tonal_pitch_class_histogram(grid: Grid) -> np.ndarray:
    """Pitch-class histogram rotated so the estimated tonic is 0 (so pieces in any key compare)."""
    tonic, _, _ = estimate_key(grid)
    return np.roll(pitch_class_histogram(grid), -tonic)


def overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Overlapping area of two histograms: 1 = identical, 0 = disjoint."""
    return float(np.minimum(p, q).sum())


def profiles(grids: list[Grid]) -> dict[str, np.ndarray]:
    """Average profiles of a set of pieces."""
    return {
        "pitch classes (from tonic)": np.mean([tonal_pitch_class_histogram(g) for g in grids], axis=0),
        "note lengths (steps)": np.mean([note_length_histogram(g) for g in grids], axis=0),
        "voices sounding": np.mean([voices_histogram(g) for g in grids], axis=0),
    }


# ---- verbatim copies ------------------------------------------------------------------------------

COPY_STEPS = 16  # a bar of 4/4 in 16th notes: what "a verbatim copy of a training bar" is measured on


# A passage's fingerprint, kept rolling from step to step. A step's value is sum(c^p) over the pitches p that sound
# plus ONSET * sum(c^p) over those struck (mod a Mersenne prime M): moving a step up k semitones multiplies its
# value by c^k. A passage of L steps is sum(STEP^(L-1-t) * value_t), multiplied by c^-r for r its first step's
# lowest pitch -- the same in every key -- plus L. Adding a step and dropping the oldest is O(1).
_M = (1 << 61) - 1
_C, _ONSET = 0x2545F4914F6CDD1D % _M, 0x1F83D9ABFB41BD6B % _M
_STEP, _LENGTH = 0x5851F42D4C957F2D % _M, 0x14057B7EF767814F % _M
_POW = [pow(_C, p, _M) for p in range(256)]
_INV = [pow(_C, -p, _M) for p in range(256)]


def step_value(onset: np.ndarray, sound: np.ndarray) -> tuple[int, int] | None:
    """One step (bool (P,) each) as (its value, its lowest sounding pitch), or None if nothing sounds."""
    sounding = np.flatnonzero(sound).tolist()
    if not sounding:
        return None
    struck = np.flatnonzero(onset).tolist()
    return (sum(_POW[p] for p in sounding) + _ONSET * sum(_POW[p] for p in struck)) % _M, sounding[0]


class Passage:
    """The fingerprint of the last ``length`` steps, kept as steps are pushed (O(1) a step): equal for two
    passages exactly when one is the other moved by some semitones (up to hash collisions, ~2^-61 a pair).
    Steps where nothing sounds are never part of a copy (as in ``CopyFinder``): no key while one is in it."""

    def __init__(self, length: int):
        self.length = length
        self.values: deque = deque()  # (value, lowest pitch) or None per step, oldest first
        self.sum = 0  # sum(STEP^(n-1-t) * value_t) over the n steps held
        self.sounding = 0  # steps in a row, up to the newest, that sound
        self._top = pow(_STEP, length - 1, _M)

    def push(self, value: tuple[int, int] | None) -> None:
        """Add a step's ``step_value`` (None: silent), dropping the oldest once ``length`` are held."""
        if len(self.values) == self.length:
            old = self.values.popleft()
            if old is not None:
                self.sum = (self.sum - self._top * old[0]) % _M
        self.values.append(value)
        self.sum = (self.sum * _STEP + (value[0] if value else 0)) % _M
        self.sounding = self.sounding + 1 if value else 0

    def key(self) -> int | None:
        """The fingerprint of the last ``length`` steps, or None (fewer held, or one of them silent)."""
        if self.sounding < self.length:
            return None
        return (self.sum * _INV[self.values[0][1]] + self.length * _LENGTH) % _M

    def key_with(self, value: tuple[int, int] | None) -> int | None:
        """The fingerprint of the last ``length`` steps and one more (``value``), without pushing it."""
        if value is None or self.sounding < self.length:
            return None
        return ((self.sum * _STEP + value[0]) * _INV[self.values[0][1]] + (self.length + 1) * _LENGTH) % _M


def window_key(onset: np.ndarray, sound: np.ndarray) -> int | None:
    """The fingerprint of a passage given as bool arrays (T, P) each (``Passage``), or None if a step is silent."""
    passage = Passage(len(sound))
    for on, snd in zip(onset, sound):
        passage.push(step_value(on, snd))
    return passage.key()


def passage_keys(grids: Iterable[Grid], length: int = COPY_STEPS) -> np.ndarray:
    """Sorted int64 fingerprints (``Passage``) of every passage of ``length`` steps of ``grids``."""
    keys = set()
    for g in grids:
        passage = Passage(length)
        for on, snd in zip(g.onset, g.sound):
            passage.push(step_value(on, snd))
            k = passage.key()
            if k is not None:
                keys.add(k)
    return np.array(sorted(keys), np.int64)


class CopyFinder:
    """Finds passages of a piece that occur verbatim, in any transposition, in a set of training pieces.

    A step is compared by its frame (which pitches start, which sound). Steps where
    nothing sounds are never part of a copy, so shared rests do not count.
    """

    def __init__(self, training: list[Grid], max_shift: int = 24):
        self.max_shift = max_shift
        self.vocab: dict[bytes, int] = {}
        self.pieces = [self._tokens(g.onset, g.sound, add=True) for g in training]
        self._windows: dict[int, set] = {}

    def _tokens(self, onset: np.ndarray, sound: np.ndarray, add: bool = False) -> np.ndarray:
        """One integer per step: the id of its frame; -1 for a silent or never-seen frame."""
        out = np.full(len(sound), -1, np.int64)
        packed = np.packbits(onset, axis=1).tobytes(), np.packbits(sound, axis=1).tobytes()
        width = 16  # 128 bits packed
        for t in range(len(sound)):
            if not sound[t].any():
                continue
            key = packed[0][t * width:(t + 1) * width] + packed[1][t * width:(t + 1) * width]
            if add:
                out[t] = self.vocab.setdefault(key, len(self.vocab))
            else:
                out[t] = self.vocab.get(key, -1)
        return out

    def _training_windows(self, length: int) -> set:
        if length not in self._windows:
            s = set()
            for tok in self.pieces:
                for i in range(len(tok) - length + 1):
                    w = tok[i:i + length]
                    if (w >= 0).all():
                        s.add(w.tobytes())
            self._windows[length] = s
        return self._windows[length]

    def _shifted_tokens(self, grid: Grid) -> list[np.ndarray]:
        out = []
        for s in range(-self.max_shift, self.max_shift + 1):
            g = grid.transpose(s)
            if g is not None:
                out.append(self._tokens(g.onset, g.sound))
        return out

    def copied(self, grid: Grid, length: int, starts=None) -> np.ndarray:
        """Bool per window start: is the window of ``length`` steps a verbatim copy (any transposition)?"""
        train = self._training_windows(length)
        n = max(0, len(grid) - length + 1)
        starts = range(n) if starts is None else starts
        hit = np.zeros(len(starts), bool)
        for tok in self._shifted_tokens(grid):
            for j, i in enumerate(starts):
                if not hit[j] and i + length <= len(tok):
                    w = tok[i:i + length]
                    hit[j] = bool((w >= 0).all()) and w.tobytes() in train
        return hit

    def longest_copy(self, grid: Grid, most: int = 512) -> int:
        """Length in steps of the longest passage of ``grid`` found verbatim in the training pieces."""
        lo, hi = 0, min(most, len(grid))
        while lo < hi:  # copies of length L imply copies of every shorter length: binary search
            mid = (lo + hi + 1) // 2
            if self.copied(grid, mid).any():
                lo = mid
            else:
                hi = mid - 1
        return lo

    def bar_copies(self, grid: Grid) -> tuple[int, int]:
        """(bars copied verbatim, bars in the piece), for the piece's whole bars."""
        bar = grid.steps_per_bar
        starts = [i for i in range(0, len(grid) - bar + 1, bar)]
        if not starts:
            return 0, 0
        return int(self.copied(grid, bar, starts).sum()), len(starts)
