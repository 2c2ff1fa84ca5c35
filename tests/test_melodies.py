"""Held-out melodies (improviser.music.melodies) and the listening measurements (improviser.music.listening_metrics)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from improviser.music.analysis import parse_key
from improviser.music.encoding import Grid, notes_to_grid
from improviser.music.listening_metrics import (
    answer_key_shares,
    bach_reference_consonance,
    consonance,
    consonance_summary,
    fifths,
    key_relation,
)


def chord_grid(pitches, steps: int = 4) -> Grid:
    """``pitches`` held together for ``steps`` steps."""
    n = len(pitches)
    onset, sound, _ = notes_to_grid(list(pitches), [0] * n, [steps] * n, steps)
    return Grid(onset, sound)


def scale_grid(tonic: int, mode: str, octaves: int = 2) -> Grid:
    """The scale played up ``octaves`` times, one quarter note a degree, tonic-heavy so its key is unambiguous."""
    steps = [0, 2, 4, 5, 7, 9, 11] if mode == "major" else [0, 2, 3, 5, 7, 8, 11]
    pitches = [60 + tonic + s for _ in range(octaves) for s in [*steps, 12, 7, 0]]
    n = len(pitches)
    onset, sound, _ = notes_to_grid(pitches, np.arange(n) * 4, np.arange(n) * 4 + 4)
    return Grid(onset, sound)


# ---- keys ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, relation", [
    ("C major", "A minor", "relative"),
    ("A minor", "C major", "relative"),
    ("C major", "G major", "close"),
    ("C major", "F major", "close"),
    ("C major", "D minor", "close"),
    ("C major", "E minor", "close"),
    ("C major", "E major", "far"),
    ("C major", "C minor", "far"),
    ("C major", "C major", "same"),
    ("F# major", "Gb major", "same"),
    ("D# minor", "F# major", "relative"),
    ("B major", "Gb major", "close"),  # 5 sharps vs 6 flats: one step round the circle
])
def test_key_relation(a, b, relation):
    assert key_relation(parse_key(a), parse_key(b)) == relation
    assert key_relation(parse_key(b), parse_key(a)) == relation


def test_fifths_positions():
    assert [fifths(parse_key(k)) for k in ("C major", "G major", "F major", "A minor", "D minor", "E minor")] == \
        [0, 1, -1, 0, -1, 1]
    assert fifths(parse_key("F# major")) == fifths(parse_key("Gb major")) == 6
    assert fifths(parse_key("Eb major")) == fifths(parse_key("C minor")) == -3
    assert key_relation((0, "major", 0.9), (9, "minor", 0.8)) == "relative"  # estimate_key's triples


def test_answer_key_shares_counts_silent_answers_as_misses():
    c, g, e_major, silent = scale_grid(0, "major"), scale_grid(7, "major"), scale_grid(4, "major"), chord_grid([], 8)
    shares = answer_key_shares([(c, c), (c, g), (c, e_major), (c, silent)])
    assert shares == {"same_or_relative": 0.25, "close": 0.5, "n": 4, "silent": 1}
    assert np.isnan(answer_key_shares([])["close"])


# ---- consonance ------------------------------------------------------------------------------------

def test_consonance_of_one_step_intervals():
    c4 = chord_grid([60])
    sixth_and_third = consonance(c4, chord_grid([52, 57]))  # E3 (minor sixth below), A3 (minor third below)
    assert sixth_and_third == {"pairs": 8, "consonant": 8, "doublings": 0, "own_steps": 4, "own_notes": 8}
    # E3 is a sixth below C4 but G3 a fourth below, and a fourth counts as dissonant.
    assert consonance(c4, chord_grid([52, 55]))["consonant"] == 4
    assert consonance(c4, chord_grid([61]))["consonant"] == 0  # C#4: a minor second
    octave = consonance(c4, chord_grid([48]))  # C3
    assert octave["consonant"] == octave["doublings"] == octave["pairs"] == 4
    assert consonance(c4, chord_grid([65]))["consonant"] == 0  # F4: a fourth above


def test_consonance_counts_only_shared_steps_and_sums():
    player = chord_grid([60], steps=2)
    own = chord_grid([64, 67], steps=6)  # E4, G4: sounds 4 steps after the player stops
    counts = consonance(player, own)
    assert counts == {"pairs": 4, "consonant": 4, "doublings": 0, "own_steps": 6, "own_notes": 12}
    summary = consonance_summary([counts, consonance(chord_grid([60]), chord_grid([61, 60]))])
    assert summary["pairs"] == 4 + 8 and summary["consonant"] == 4 + 4 and summary["doublings"] == 4
    assert summary["consonant_share"] == pytest.approx(8 / 12)
    assert summary["doubling_share"] == pytest.approx(4 / 12)
    assert summary["notes_per_step"] == pytest.approx((12 + 8) / (6 + 4))
    assert np.isnan(consonance_summary([])["consonant_share"])


def test_bach_reference_consonance_uses_soprano_against_the_rest():
    def voice(pitch):
        g = chord_grid([pitch])
        return g.onset, g.sound

    voices = [voice(76), voice(67), voice(64), voice(48)]  # E5 over G4, E4, C3: a sixth, an octave, a third
    counts = bach_reference_consonance(voices)
    assert counts == {"pairs": 12, "consonant": 12, "doublings": 4, "own_steps": 4, "own_notes": 12}
    voices[0] = voice(72)  # C5: a fourth above the G4
    assert bach_reference_consonance(voices)["consonant"] == 8


# ---- held-out melodies -----------------------------------------------------------------------------

def test_heldout_melodies_load_cache_and_place(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    from improviser.music.melodies import COLLECTIONS, PLACE_RANGE, load_heldout_melodies, place

    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path))
    melodies = load_heldout_melodies(n=6, seed=0)
    assert len(melodies) == 6
    assert {m.collection for m in melodies} == set(COLLECTIONS)  # spread over all five
    assert len({m.name for m in melodies}) == 6
    for m in melodies:
        assert m.grid.sound.sum(axis=1).max() <= 1, m.name  # one line
        assert m.grid.steps_per_bar == m.bar_steps and m.bar_steps in (8, 12, 16, 20, 24, 28, 32)
        assert 0 <= m.first_bar < m.bar_steps
        assert (m.grid.bar_start + m.first_bar) % m.bar_steps == 0  # the first full bar starts on a bar line
        assert m.whole_bars >= 8
        assert len(m.phrase(4)) == m.first_bar + 4 * m.bar_steps
        assert len(m.continuation(4)) == 4 * m.bar_steps
        assert m.continuation(4).bar_positions()[0] == 0
        assert m.phrase(4).sound.any() and m.continuation(4).sound.any()
        # phrase and continuation together are exactly the opening of the tune
        joined = np.vstack([m.phrase(4).sound, m.continuation(4).sound])
        assert (joined == m.grid.sound[:len(joined)]).all()
    with pytest.raises(ValueError):
        melodies[0].phrase(melodies[0].whole_bars + 1)

    start = time.perf_counter()
    again = load_heldout_melodies(n=6, seed=0)
    assert time.perf_counter() - start < 1.0
    assert [m.name for m in again] == [m.name for m in melodies]
    for a, b in zip(again, melodies):
        assert (a.grid.onset == b.grid.onset).all() and (a.grid.sound == b.grid.sound).all()
        assert (a.bar_steps, a.first_bar, a.grid.bar_start) == (b.bar_steps, b.first_bar, b.grid.bar_start)

    rng = np.random.default_rng(0)
    for m in melodies:
        for _ in range(5):
            placed = place(m, rng)
            pitches = placed.grid.notes()[:, 0]
            assert PLACE_RANGE[0] <= pitches.mean() < PLACE_RANGE[1]
            assert pitches.min() >= 24 and pitches.max() <= 95
            shift = int(pitches[0]) - int(m.grid.notes()[0, 0])
            assert (np.roll(m.grid.sound, shift, axis=1) == placed.grid.sound).all()  # the same tune, moved


def test_the_held_out_collections_are_never_among_the_training_chorales():
    """Training reads the Bach chorales of the corpus; none of its files may come from the folk collections
    that the listening evaluation holds out."""
    from improviser.model.data import _chorale_paths
    from improviser.music.melodies import COLLECTIONS

    paths = _chorale_paths()
    assert len(paths) > 300
    assert not [p for p in paths if any(c.lower() in str(p).lower() for c in COLLECTIONS)]
