"""Encoding: notes <-> grid, MIDI files in and out, on real files."""

from pathlib import Path

import mido
import numpy as np
import pytest

from improviser.errors import MidiFileError
from improviser.music.encoding import (
    Grid,
    TimedNote,
    grid_to_notes,
    grid_to_timed_notes,
    notes_to_grid,
    read_midi,
    write_midi,
)

DATA = Path(__file__).parent / "data"
CHORALES = sorted(DATA.glob("bwv*.mid"))


def test_round_trip_is_exact_for_grid_aligned_notes_with_restrikes():
    rng = np.random.default_rng(0)
    # Random monophonic lines per pitch (no overlaps on a pitch), many re-struck notes back to back.
    notes = []
    for p in rng.choice(np.arange(40, 90), 12, replace=False):
        t = 0
        while t < 200:
            length = int(rng.integers(1, 9))
            notes.append((int(p), t, t + length))
            t += length + int(rng.integers(0, 3))  # gap 0 = a re-strike right after
    a = np.array(sorted(notes, key=lambda n: (n[1], n[0])))
    onset, sound, _ = notes_to_grid(a[:, 0], a[:, 1], a[:, 2])
    pitch, start, end = grid_to_notes(onset, sound)
    assert np.array_equal(np.stack([pitch, start, end], 1), a)


def test_restruck_note_differs_from_held_note():
    two_quarters = notes_to_grid([60, 60], [0, 4], [4, 8])
    one_half = notes_to_grid([60], [0], [8])
    assert np.array_equal(two_quarters[1], one_half[1])  # both sound for 8 steps
    assert two_quarters[0][:, 60].sum() == 2 and one_half[0][:, 60].sum() == 1


def test_midi_file_round_trip_through_disk(tmp_path):
    g = read_midi(CHORALES[0])
    out = tmp_path / "again.mid"
    write_midi(out, {"improviser": grid_to_timed_notes(g, 90)}, 90)
    g2 = read_midi(out)
    assert np.array_equal(g.notes()[:, :3], g2.notes()[:, :3])


def test_real_chorale_is_four_voices_on_a_sixteenth_grid():
    g = read_midi(CHORALES[0])
    voices = g.sound.sum(axis=1)
    assert np.median(voices) == 4
    assert len(g) > 100
    durations = g.notes()[:, 2] - g.notes()[:, 1]
    assert {2, 4}.issubset(set(durations.tolist()))  # eighths and quarters


def test_tempo_map_is_followed(tmp_path):
    # 120 bpm for one beat, then 60 bpm: a note at 1.0 s is beat 2, a note at 0.25 s is beat 0.5.
    mid = mido.MidiFile(ticks_per_beat=480)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    tr.append(mido.Message("note_on", note=60, velocity=80, time=240))  # beat 0.5
    tr.append(mido.Message("note_off", note=60, time=240))  # beat 1
    tr.append(mido.MetaMessage("set_tempo", tempo=1000000, time=0))
    tr.append(mido.Message("note_on", note=62, velocity=80, time=480))  # beat 2
    tr.append(mido.Message("note_off", note=62, time=480))  # beat 3
    mid.save(tmp_path / "tempo.mid")
    notes = read_midi(tmp_path / "tempo.mid").notes()
    assert notes[:, :3].tolist() == [[60, 2, 4], [62, 8, 12]]


def test_drums_are_left_out(tmp_path):
    mid = mido.MidiFile()
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.Message("note_on", note=36, velocity=100, channel=9, time=0))
    tr.append(mido.Message("note_on", note=67, velocity=100, channel=0, time=0))
    tr.append(mido.Message("note_off", note=36, channel=9, time=480))
    tr.append(mido.Message("note_off", note=67, channel=0, time=0))
    mid.save(tmp_path / "drums.mid")
    assert read_midi(tmp_path / "drums.mid").notes()[:, 0].tolist() == [67]


@pytest.mark.parametrize("content", [b"", b"hello, this is text", b"MThd\x00\x00\x00\x06\x00\x01\x00\x02",
                                     Path(CHORALES[0]).read_bytes()[:60]])
def test_unreadable_files_raise_one_clear_error(tmp_path, content):
    p = tmp_path / "bad.mid"
    p.write_bytes(content)
    with pytest.raises(MidiFileError, match="bad.mid"):
        read_midi(p)


def test_file_without_notes_is_an_error(tmp_path):
    write_midi(tmp_path / "empty.mid", {"x": []}, 120, length=2.0)
    with pytest.raises(MidiFileError, match="no pitched notes"):
        read_midi(tmp_path / "empty.mid")


def test_written_file_has_exactly_the_asked_length(tmp_path):
    notes = [TimedNote(60, 0.0, 1.0), TimedNote(64, 2.0, 45.0)]  # runs past the end: cut at 30 s
    write_midi(tmp_path / "a.mid", {"improviser": notes}, 100, length=30.0)
    assert mido.MidiFile(tmp_path / "a.mid").length == pytest.approx(30.0, abs=1e-3)


def test_transposition_moves_notes_and_refuses_to_leave_midi_range():
    g = read_midi(CHORALES[0])
    up = g.transpose(5)
    assert np.array_equal(up.notes()[:, 0], g.notes()[:, 0] + 5)
    assert g.transpose(127) is None


def test_grid_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        Grid(np.zeros((4, 88), bool), np.zeros((4, 88), bool))


def test_a_files_length_in_seconds_follows_its_tempo_changes(tmp_path):
    """Grid.seconds: 8 beats at 120 bpm then 8 at 60 = 4 s + 8 s, as the file plays."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120), time=0),
                                mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60), time=8 * 480)])
    notes = mido.MidiTrack()
    for _ in range(16):
        notes.append(mido.Message("note_on", note=60, velocity=80, time=0))
        notes.append(mido.Message("note_off", note=60, velocity=0, time=480))
    mid.tracks += [conductor, notes]
    mid.save(tmp_path / "t.mid")
    grid = read_midi(tmp_path / "t.mid")
    assert grid.tempo_map == ((32, 60.0),)
    assert grid.seconds() == pytest.approx(12.0)
    assert grid.seconds() == pytest.approx(pretty_midi_length(tmp_path / "t.mid"), abs=0.01)


def pretty_midi_length(path) -> float:
    import pretty_midi

    return pretty_midi.PrettyMIDI(str(path)).get_end_time()
