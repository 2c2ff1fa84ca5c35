"""Four-part harmony, counted on the beat: parallel fifths and octaves, common chords, four notes sounding.

Pure numpy, on step grids. The same counts for what the model plays and for Bach's own chorales
(``improviser evaluate --harmony``):

- voices on a beat: the notes sounding at the beat's first step, sorted low to high;
- a *change*: two beats in a row that both sound exactly four notes, and not the same four;
- *parallels*: a pair of voices a perfect fifth or an octave (or unison) apart, compound or not, in
  both chords of a change, both voices moving the same way (consecutive perfect intervals);
- a *common chord*: the beat's pitch classes form a major, minor or diminished triad, or a seventh
  chord (dominant, minor, major, half-diminished, diminished), complete or without its fifth;
  counted over beats that sound at least three notes;
- *four notes*: steps that sound exactly four notes, over steps that sound any.

Counts, not shares, so pieces can be summed before ``harmony_summary`` divides.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .encoding import Grid

_TRIADS = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6)}
_SEVENTHS = {"dominant": (0, 4, 7, 10), "minor": (0, 3, 7, 10), "major": (0, 4, 7, 11),
             "half-diminished": (0, 3, 6, 10), "diminished": (0, 3, 6, 9)}


def _chord_sets() -> frozenset:
    shapes = list(_TRIADS.values())
    for seventh in _SEVENTHS.values():
        shapes.append(seventh)
        if seventh[2] in (6, 7):  # without its fifth (the diminished fifth of a dim or half-dim chord too)
            shapes.append(tuple(x for x in seventh if x != seventh[2]))
    return frozenset(frozenset((root + x) % 12 for x in shape) for shape in shapes for root in range(12))


COMMON_CHORDS = _chord_sets()
PERFECT = (0, 7)  # interval classes of octaves (and unisons) and fifths


def is_common_chord(pitches: Iterable[int]) -> bool:
    return frozenset(int(p) % 12 for p in pitches) in COMMON_CHORDS


def parallels(a: list[int], b: list[int]) -> int:
    """Consecutive fifths or octaves between two four-note chords (each sorted low to high)."""
    n = 0
    for i in range(4):
        for j in range(i + 1, 4):
            before, after = (a[j] - a[i]) % 12, (b[j] - b[i]) % 12
            if before != after or before not in PERFECT or a[j] == a[i]:
                continue  # a unison that splits is not a parallel; nor is a pair that keeps its notes
            mi, mj = b[i] - a[i], b[j] - a[j]
            if mi != 0 and mj != 0 and (mi > 0) == (mj > 0):
                n += 1
    return n


def harmony_counts(grid: Grid | np.ndarray, steps_per_beat: int = 4) -> dict:
    """The counts of one piece. ``grid``: a Grid, or its bool (T, 128) sounding array."""
    sound = grid.sound if isinstance(grid, Grid) else np.asarray(grid, bool)
    sizes = sound.sum(axis=1)
    beats = [np.flatnonzero(sound[t]).tolist() for t in range(0, len(sound), steps_per_beat)]
    changes = par = 0
    for a, b in zip(beats, beats[1:]):
        if len(a) == 4 and len(b) == 4 and a != b:
            changes += 1
            par += parallels(a, b)
    chordal = [p for p in beats if len(p) >= 3]
    return {"changes": changes, "parallels": par, "chord_beats": len(chordal),
            "common": sum(is_common_chord(p) for p in chordal),
            "sounding_steps": int((sizes > 0).sum()), "four_steps": int((sizes == 4).sum())}


def summed(counts: Iterable[dict]) -> dict[str, int]:
    """The counts of several pieces added up, name by name."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def sharer(total: dict[str, int]):
    """share(a, b, scale=1): scale * total[a] / total[b], NaN where there is no b."""
    def share(a: str, b: str, scale: float = 1.0) -> float:
        return scale * total.get(a, 0) / total[b] if total.get(b) else float("nan")

    return share


def harmony_summary(counts: Iterable[dict]) -> dict:
    """Summed counts -> parallels per 100 changes, share of common chords on beats, share of four-note steps."""
    total = summed(counts)
    share = sharer(total)
    return {"parallels_per_100": share("parallels", "changes", 100.0), "common_chords": share("common", "chord_beats"),
            "four_notes": share("four_steps", "sounding_steps"), **total}
