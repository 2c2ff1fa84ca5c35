"""The held-out test set of melody files (improviser.music.melody_files): read back as the project reads a user's
file, each has the tune's meter, its bar lines and its notes."""

from __future__ import annotations

import mido
import numpy as np
import pytest

from improviser.music.encoding import STEPS_PER_BEAT, Grid, Meter, notes_to_grid, read_midi
from improviser.music.melodies import Melody
from improviser.music.melody_files import PARTS, melody_files, part_of, write_melody_file


def note_set(grid: Grid, shift: int = 0) -> set:
    return {(p, s + shift, e + shift) for p, s, e, _ in grid.notes().tolist()}


def toy(meter: Meter, pickup: int) -> Melody:
    """A pickup of ``pickup`` steps, then two bars of quarter notes (dotted quarters in compound meters)."""
    bar = meter.bar_steps()
    length = pickup + 2 * bar
    starts = list(range(0, length, meter.beat_steps()))
    starts = ([0] if pickup else []) + [pickup + s for s in starts if pickup + s < length]
    ends = starts[1:] + [length]
    pitches = [60 + i % 12 for i in range(len(starts))]
    onset, sound, _ = notes_to_grid(pitches, starts, ends, length)
    grid = Grid(onset, sound, STEPS_PER_BEAT, max(1, bar // 4), 100.0, None, (-pickup) % bar, meter)
    return Melody("toy", grid, bar, pickup)


@pytest.mark.parametrize("meter, pickup", [(Meter(3, 4), 4), (Meter(6, 8), 2), (Meter(6, 8), 6), (Meter(4, 4), 1),
                                           (Meter(2, 4), 0), (Meter(12, 8), 4), (Meter(9, 8), 6)])
@pytest.mark.parametrize("rests", [False, True])
def test_a_pickup_is_read_back_where_it_was_written(tmp_path, meter, pickup, rests):
    melody = toy(meter, pickup)
    path = tmp_path / "toy.mid"
    write_melody_file(path, melody, 96.0, np.full(len(melody.grid.notes()), 80), rests)
    grid = read_midi(path)
    shift = meter.bar_steps() - pickup if pickup and rests else 0
    assert grid.meter == meter
    assert grid.bar_start == (0 if rests else melody.grid.bar_start)
    assert note_set(grid) == note_set(melody.grid, shift)
    assert grid.bpm == pytest.approx(96.0)
    signatures = [(m.numerator, m.denominator) for m in mido.MidiFile(path).tracks[0] if m.type == "time_signature"]
    if pickup and not rests:  # a short first bar in the meter's unit (16ths if it is not a whole number of them)
        unit = int(meter.unit_steps())
        first = (pickup // unit, meter.denominator) if pickup % unit == 0 else (pickup, 16)
        assert signatures == [first, (meter.numerator, meter.denominator)]
    else:
        assert signatures == [(meter.numerator, meter.denominator)]


def test_the_test_set_reads_back_with_each_tunes_meter_bar_lines_and_notes():
    files = melody_files(6, "report")
    again = melody_files(6, "report")
    assert [f.path for f in files] == [f.path for f in again]  # deterministic
    assert [f.path for f in files[:3]] == [f.path for f in melody_files(3, "report")]  # a prefix of a longer set
    for f in files:
        grid = read_midi(f.path)
        shift = f.melody.bar_steps - f.melody.first_bar if f.pickup_as_rests else 0
        assert grid.meter == f.meter, f.path
        assert grid.bar_start == f.bar_start, f.path
        assert note_set(grid) == note_set(f.melody.grid, shift), f.path
        assert 80 <= grid.bpm <= 120
        velocities = grid.velocity[grid.onset]
        assert velocities.min() >= 60 and velocities.max() <= 100
        pitches = grid.notes()[:, 0]
        assert 62 <= pitches.mean() < 74  # a soprano range
        bars = (len(f.melody.grid) - f.melody.first_bar) / f.melody.bar_steps
        assert bars == 8
        assert len(mido.MidiFile(f.path).tracks) == 2 and mido.MidiFile(f.path).type == 1


def test_the_two_parts_never_share_a_tune():
    tune, report = (melody_files(4, p) for p in PARTS)
    assert not {f.melody.name for f in tune} & {f.melody.name for f in report}
    assert all(part_of(f.melody.name) == "tune" for f in tune)
    assert all(part_of(f.melody.name) == "report" for f in report)
