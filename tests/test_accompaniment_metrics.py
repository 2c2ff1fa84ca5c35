"""The six accompaniment figures (improviser.music.accompaniment_metrics) on small grids worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from improviser.music.accompaniment_metrics import (
    FIGURES,
    accompaniment_counts,
    accompaniment_summary,
    bach_reference_counts,
    beat_steps,
)
from improviser.music.encoding import Meter


def roll(n: int, *notes) -> np.ndarray:
    """bool (n, 128) from (pitch, start, end) notes."""
    a = np.zeros((n, 128), bool)
    for pitch, start, end in notes:
        a[start:end, pitch] = True
    return a


def test_beats_follow_the_meter_and_the_bar_lines():
    assert beat_steps(16, Meter(4, 4)).tolist() == [0, 4, 8, 12]
    assert beat_steps(24, Meter(6, 8)).tolist() == [0, 6, 12, 18]  # dotted quarters, not eighths
    assert beat_steps(12, Meter(3, 4), bar_start=8).tolist() == [0, 4, 8]
    assert beat_steps(14, Meter(6, 8), bar_start=10).tolist() == [2, 8]  # a pickup of an eighth: the bar at step 2
    assert beat_steps(16, Meter(2, 2)).tolist() == [0, 8]


def test_consonance_leaves_out_unisons_and_counts_the_fourth_as_dissonant():
    tune = roll(4, (72, 0, 4))
    own = roll(4, (72, 0, 4), (60, 0, 4), (67, 0, 2), (65, 2, 4))  # unison, octave, a fourth below, a fifth below
    c = accompaniment_counts(tune, own, Meter(4, 4))
    # Pairs per step: octave 4 steps, fourth (72-67) 2 steps, fifth (72-65) 2 steps; the unison is not a pair.
    assert (c["pairs"], c["consonant_pairs"]) == (8, 4 + 2)


def test_on_top_counts_its_notes_above_the_tune_only_while_the_tune_sounds():
    tune = roll(8, (67, 0, 4))
    own = roll(8, (60, 0, 8), (72, 2, 8))
    c = accompaniment_counts(tune, own, Meter(4, 4))
    # Steps 0-3: 60 each step (4 at or below), 72 at steps 2-3 (2 above); steps 4-7 do not count.
    assert (c["own_notes"], c["notes_under"]) == (6, 4)


def test_beats_bass_common_chords_and_four_voices():
    # 4/4, four beats; the tune sounds on beats 0, 1 and 3 (silent on beat 2).
    tune = roll(16, (72, 0, 8), (71, 12, 16))
    own = roll(16, (60, 0, 4), (64, 0, 4), (67, 0, 4),     # beat 0: C E G under C -> C major, four voices, bass
               (65, 4, 8), (69, 4, 8),                     # beat 1: F A under C, bass F a fifth below: chord, 3
               (55, 8, 16), (62, 12, 16), (65, 12, 16))    # beat 3: G D F under B: a dominant seventh, four voices
    c = accompaniment_counts(tune, own, Meter(4, 4))
    assert c["beats"] == 3
    assert c["bass_beats"] == 2  # 60 and 55 are an octave or more below; 65 under 72 is not
    assert c["chord_beats"] == 3  # C major, F major, G dominant seventh
    assert c["four_beats"] == 2  # beats 0 and 3; beat 1 has three pitches
    assert c["changes"] == 0  # beat 0 and beat 3 are not consecutive beats


def test_parallels_are_counted_over_changes_of_four_voices():
    # C E G C' -> D F A D': every voice up; the bass-soprano octave and bass-tenor fifth move in parallel.
    tune = roll(8, (72, 0, 4), (74, 4, 8))
    own = roll(8, (48, 0, 4), (64, 0, 4), (67, 0, 4), (50, 4, 8), (65, 4, 8), (69, 4, 8))
    c = accompaniment_counts(tune, own, Meter(4, 4))
    assert c["changes"] == 1
    # Of the six pairs (48, 64, 67, 72) only 48-67 (a fifth) and 48-72 (two octaves) are perfect and kept.
    assert c["parallels"] == 2
    s = accompaniment_summary([c, c])
    assert s["parallels_per_100"] == pytest.approx(200.0)
    assert s["changes"] == 2


def test_the_summary_is_nan_where_nothing_was_counted_and_shares_otherwise():
    silent = accompaniment_counts(roll(8), roll(8, (60, 0, 8)), Meter(3, 4))
    s = accompaniment_summary([silent])
    assert all(math.isnan(s[k]) for k in FIGURES)
    tune = roll(8, (72, 0, 8))
    s = accompaniment_summary([accompaniment_counts(tune, roll(8, (60, 0, 8)), Meter(4, 4))])
    assert (s["consonant"], s["on_top"], s["bass"], s["common_chord"], s["four_voices"]) == (1.0, 1.0, 1.0, 0.0, 0.0)


def test_an_accompaniment_longer_or_shorter_than_the_tune_is_cut_or_padded():
    tune = roll(8, (72, 0, 8))
    short = accompaniment_counts(tune, roll(4, (60, 0, 4)), Meter(4, 4))
    long = accompaniment_counts(tune, roll(12, (60, 0, 12)), Meter(4, 4))
    assert short["pairs"] == 4 and long["pairs"] == 8


def test_bach_reference_takes_the_soprano_as_the_tune():
    parts = [roll(4, (72, 0, 4)), roll(4, (67, 0, 4)), roll(4, (64, 0, 4)), roll(4, (48, 0, 4))]
    onset = [np.zeros_like(p) for p in parts]
    c = bach_reference_counts(list(zip(onset, parts)), Meter(4, 4))
    assert (c["beats"], c["bass_beats"], c["chord_beats"], c["four_beats"], c["notes_under"]) == (1, 1, 1, 1, 12)
