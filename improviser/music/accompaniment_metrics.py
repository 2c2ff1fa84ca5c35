"""How an accompaniment sits under a tune, as a harmoniser's would: six figures, counted on the step grid.

Pure numpy. The tune (the player's line) and the accompaniment (everything else) are bool (T, 128) arrays;
the tune's meter and ``bar_start`` (where step 0 falls in its bar) say where the beats are: a beat is a step
whose position in its bar is a multiple of ``Meter.beat_steps`` (a dotted quarter in 6/8, 9/8, 12/8, else
the denominator's note). The same counts for what the improviser plays and for Bach's lower three voices
under his soprano (:func:`bach_reference_counts`):

- *consonant*: every (tune pitch, accompaniment pitch) pair sounding at the same step, exact unisons left
  out, is consonant if the interval mod 12 is in ``CONSONANT`` (octaves are, the fourth is not);
- *on top*: of the accompaniment's notes sounding at steps where the tune sounds (one per pitch and step),
  those at or below the tune's highest note;
- *bass*: of the beats where the tune sounds, those where the accompaniment's lowest note is an octave or
  more below the tune's highest;
- *common chord*: of those beats, those where the tune's and the accompaniment's pitches together form a
  common chord (:func:`~improviser.music.harmony_metrics.is_common_chord`);
- *four voices*: of those beats, those where together they are exactly four distinct pitches;
- *parallels per 100 changes*: over consecutive beats that both have four voices and differ,
  :func:`~improviser.music.harmony_metrics.parallels` summed, per 100 such changes.

Counts, not shares, so pieces can be summed before :func:`accompaniment_summary` divides.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .encoding import STEPS_PER_BEAT, Meter
from .harmony_metrics import is_common_chord, parallels, sharer, summed
from .listening_metrics import CONSONANT

FIGURES = ("consonant", "on_top", "bass", "common_chord", "four_voices", "parallels_per_100")


def beat_steps(n_steps: int, meter: Meter, bar_start: int = 0, steps_per_beat: int = STEPS_PER_BEAT) -> np.ndarray:
    """The steps (int, ascending) that fall on a beat of ``meter``, bar lines placed by ``bar_start``."""
    position = (np.arange(n_steps) + bar_start) % meter.bar_steps(steps_per_beat)
    return np.flatnonzero(position % meter.beat_steps(steps_per_beat) == 0)


def _padded(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, 128), bool)
    out[:min(n, len(a))] = np.asarray(a, bool)[:n]
    return out


def accompaniment_counts(tune: np.ndarray, own: np.ndarray, meter: Meter, bar_start: int = 0,
                         steps_per_beat: int = STEPS_PER_BEAT) -> dict:
    """The counts of one piece. tune, own: bool (T, 128) sounding arrays (a tune's onsets may be or-ed in);
    ``own`` is cut or padded with silence to the tune's length."""
    tune = np.asarray(tune, bool)
    n = len(tune)
    own = _padded(own, n)
    # Pairs sounding together: (tune pitch p, own pitch q) -> steps, as one matrix product.
    together = tune.T.astype(np.int64) @ own.astype(np.int64)  # (128, 128)
    p, q = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    interval = np.abs(p - q) % 12
    not_unison = p != q
    pairs = int(together[not_unison].sum())
    consonant = int(together[not_unison & np.isin(interval, list(CONSONANT))].sum())

    sounding = tune.any(axis=1)
    top = np.where(sounding, 127 - np.argmax(tune[:, ::-1], axis=1), -1)  # the tune's highest pitch (-1: silent)
    under = np.arange(128)[None, :] <= top[:, None]
    heard = own & sounding[:, None]
    own_notes, on_top = int(heard.sum()), int((heard & under).sum())

    beats = beat_steps(n, meter, bar_start, steps_per_beat)
    bass = common = four = changes = par = 0
    chords: list[list[int] | None] = []  # each beat's four voices (sorted), None if it has not four
    tune_beats = 0
    for t in beats:
        if not sounding[t]:
            chords.append(None)
            continue
        tune_beats += 1
        mine = np.flatnonzero(own[t])
        together_pitches = np.flatnonzero(own[t] | tune[t]).tolist()
        bass += bool(mine.size) and int(mine[0]) <= top[t] - 12
        common += is_common_chord(together_pitches)
        is_four = len(together_pitches) == 4
        four += is_four
        chords.append(together_pitches if is_four else None)
    for a, b in zip(chords, chords[1:]):
        if a is not None and b is not None and a != b:
            changes += 1
            par += parallels(a, b)
    return {"pairs": pairs, "consonant_pairs": consonant, "own_notes": own_notes, "notes_under": on_top,
            "beats": tune_beats, "bass_beats": int(bass), "chord_beats": int(common), "four_beats": int(four),
            "changes": changes, "parallels": par}


def accompaniment_summary(counts: Iterable[dict]) -> dict:
    """Summed counts -> the six figures (shares 0..1, parallels per 100 changes; NaN where undefined),
    with the summed counts."""
    total = summed(counts)
    share = sharer(total)
    return {"consonant": share("consonant_pairs", "pairs"), "on_top": share("notes_under", "own_notes"),
            "bass": share("bass_beats", "beats"), "common_chord": share("chord_beats", "beats"),
            "four_voices": share("four_beats", "beats"),
            "parallels_per_100": share("parallels", "changes", 100.0), **total}


def bach_reference_counts(voices: list[tuple[np.ndarray, np.ndarray]], meter: Meter, bar_start: int = 0,
                          steps_per_beat: int = STEPS_PER_BEAT) -> dict:
    """The counts for a chorale: its soprano (part 0) as the tune, the lower parts together as the accompaniment.

    voices: (onset, sound) bool (T, 128) per part, highest first, as ``Piece.voices`` returns.
    """
    if len(voices) < 2:
        raise ValueError(f"need the soprano and at least one lower part, got {len(voices)} part(s)")
    n = max(len(s) for _, s in voices)
    soprano = _padded(voices[0][0] | voices[0][1], n)
    lower = np.zeros((n, 128), bool)
    for onset, sound in voices[1:]:
        lower[:len(sound)] |= sound | onset
    return accompaniment_counts(soprano, lower, meter, bar_start, steps_per_beat)
