"""Musical measurements on grids: key, profiles against a reference, and verbatim copies of training data.

All pure numpy. Used by ``improviser evaluate`` and by tests that check what the
improviser plays (e.g. that it answers in the player's key).
"""

from __future__ import annotations

import re
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


# A passage's fingerprint is a polynomial hash of its frames as integers, modulo a Mersenne prime, cut to 64 bits.
_KEY_MOD = (1 << 127) - 1
_KEY_MUL = 0x9E3779B97F4A7C15


def step_bits(onset: np.ndarray, sound: np.ndarray) -> list[tuple[int, int]]:
    """Each step's frame (bool (T, P) each) as two Python ints, which pitches start and which sound (bit p:
    pitch p): what passage fingerprints are made of, made once per step."""
    on = np.packbits(onset, axis=-1, bitorder="little")
    so = np.packbits(sound, axis=-1, bitorder="little")
    return [(int.from_bytes(a.tobytes(), "little"), int.from_bytes(b.tobytes(), "little")) for a, b in zip(on, so)]


def passage_key(steps: list[tuple[int, int]]) -> int | None:
    """A transposition-free fingerprint (int64) of a passage given as ``step_bits``, or None if a step of it
    is silent: the passage is moved down so its lowest note is pitch 0, so the same passage in any key has
    the same key; steps where nothing sounds are never part of a copy (as in ``CopyFinder``)."""
    low = 1 << 200
    for _, sound in steps:
        if not sound:
            return None
        low = min(low, sound & -sound)  # the lowest sounding pitch's bit
    shift = low.bit_length() - 1
    k = len(steps)
    for onset, sound in steps:
        k = ((k * _KEY_MUL + (onset >> shift)) * _KEY_MUL + (sound >> shift)) % _KEY_MOD
    return (k & 0xFFFF_FFFF_FFFF_FFFF) - (1 << 63)


def window_key(onset: np.ndarray, sound: np.ndarray) -> int | None:
    """``passage_key`` of a passage given as bool arrays (T, P) each."""
    return passage_key(step_bits(onset, sound))


def passage_keys(grids: Iterable[Grid], length: int = COPY_STEPS) -> np.ndarray:
    """Sorted int64 fingerprints (``passage_key``) of every passage of ``length`` steps of ``grids``."""
    keys = set()
    for g in grids:
        steps = step_bits(g.onset, g.sound)
        for i in range(len(steps) - length + 1):
            k = passage_key(steps[i:i + length])
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
