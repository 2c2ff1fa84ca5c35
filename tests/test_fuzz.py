"""Fuzzing the MIDI reader and the encoder: nothing but a clean error or a valid result."""

from pathlib import Path

import mido
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from improviser.errors import MidiFileError
from improviser.music.encoding import Grid, grid_to_notes, notes_to_grid, read_midi
from improviser.testing import mangled

SEED = (Path(__file__).parent / "data" / "bwv10_7.mid").read_bytes()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_valid(grid: Grid) -> None:
    assert grid.onset.shape == grid.sound.shape and grid.onset.shape[1] == 128
    assert not (grid.onset & ~grid.sound).any()
    notes = grid.notes()
    assert len(notes) > 0 and (notes[:, 2] > notes[:, 1]).all()


def read_or_clean_error(path: Path) -> None:
    try:
        check_valid(read_midi(path))
    except MidiFileError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(20, len(SEED)))
def test_mutated_midi_files(tmp_path, flips, cut):
    data = mangled(SEED, flips, cut)
    p = tmp_path / "fuzz.mid"
    p.write_bytes(data)
    read_or_clean_error(p)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(tmp_path, blob):
    p = tmp_path / "random.mid"
    p.write_bytes(b"MThd" + blob if blob[:1] == b"\x00" else blob)
    read_or_clean_error(p)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["note_on", "note_off", "control_change", "pitchwheel", "tempo"]),
                          st.integers(0, 127), st.integers(0, 127), st.integers(0, 15), st.integers(0, 5000)),
                max_size=60), st.sampled_from([24, 96, 480, 960]))
def test_random_well_formed_midi(tmp_path, events, tpb):
    mid = mido.MidiFile(ticks_per_beat=tpb)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    for kind, a, b, ch, dt in events:
        if kind == "note_on":
            tr.append(mido.Message("note_on", note=a, velocity=b, channel=ch, time=dt))
        elif kind == "note_off":
            tr.append(mido.Message("note_off", note=a, velocity=b, channel=ch, time=dt))
        elif kind == "control_change":
            tr.append(mido.Message("control_change", control=a, value=b, channel=ch, time=dt))
        elif kind == "pitchwheel":
            tr.append(mido.Message("pitchwheel", pitch=a * 64 - 8192, channel=ch, time=dt))
        else:
            tr.append(mido.MetaMessage("set_tempo", tempo=max(1, a * 20000 + b), time=dt))
    p = tmp_path / "gen.mid"
    mid.save(p)
    read_or_clean_error(p)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 127), st.integers(0, 300), st.integers(-5, 40)), max_size=80))
def test_encoder_round_trip_on_random_notes(notes):
    """Any notes -> grid -> notes -> grid gives the same grid (the grid is the canonical form)."""
    if notes:
        a = np.array(notes)
        pitch, start, end = a[:, 0], a[:, 1], a[:, 1] + a[:, 2]
    else:
        pitch = start = end = np.zeros(0, int)
    onset, sound, _ = notes_to_grid(pitch, start, end, n_steps=360)
    p2, s2, e2 = grid_to_notes(onset, sound)
    onset2, sound2, _ = notes_to_grid(p2, s2, e2, n_steps=360)
    assert np.array_equal(onset, onset2) and np.array_equal(sound, sound2)
    assert (e2 > s2).all()
