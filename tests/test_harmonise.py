"""`improviser harmonise MELODY.mid OUT.mid` through typer's CliRunner, with the shipped checkpoint, on real
files: the tune kept note for note on the 'player' track, three parts under it a chord a beat of the tune's
own meter (pickups and 6/8 included), the same file for the same seed, and one line for each bad input."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import mido
import pytest

from improviser.music.encoding import read_midi
from improviser.music.harmony_metrics import is_common_chord
from improviser.testing import cli as run
from improviser.testing import one_line_error

TPB = 480
Q, E = TPB, TPB // 2  # a quarter, an eighth (ticks)
D, Fs, G, A, B = 62, 66, 67, 69, 71
ODE = [(Fs, Q), (Fs, Q), (G, Q), (A, Q), (A, Q), (G, Q), (Fs, Q), (64, Q), (D, Q), (D, Q), (64, Q), (Fs, Q),
       (Fs, 3 * Q // 2), (64, Q // 2), (64, 2 * Q),
       (Fs, Q), (Fs, Q), (G, Q), (A, Q), (A, Q), (G, Q), (Fs, Q), (64, Q), (D, Q), (D, Q), (64, Q), (Fs, Q),
       (64, 3 * Q // 2), (D, Q // 2), (D, 2 * Q)]  # Ode to Joy in D, 4/4
# A waltz in G, 3/4, with a one-beat pickup.
WALTZ = [(62, Q), (67, 2 * Q), (71, Q), (74, 2 * Q), (71, Q), (72, Q), (71, Q), (69, Q), (67, 3 * Q), (69, 2 * Q),
         (71, Q), (72, 2 * Q), (69, Q), (67, Q), (66, Q), (69, Q), (67, 3 * Q)]
# A jig in D, 6/8, with a one-eighth pickup.
JIG = [(69, E), (74, E), (73, E), (74, E), (76, 2 * E), (74, E), (73, E), (71, E), (69, E), (66, 3 * E), (69, E),
       (74, E), (73, E), (74, E), (76, 2 * E), (78, E), (76, E), (74, E), (73, E), (74, 3 * E)]


def write_tune(path: Path, notes, meter=(4, 4), pickup: int = 0, bpm: float = 100, under=None, channel=0) -> Path:
    """A type-1 MIDI file: tempo and time signature(s) on a conductor track (a pickup is a short first bar),
    the notes (pitch, ticks; pitch None for a rest) on a track of their own; ``under``: notes of a second
    part, struck with the tune's, on a third track."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0)])
    num, den = meter
    if pickup:
        conductor.append(mido.MetaMessage("time_signature", numerator=pickup * den // (4 * TPB), denominator=den))
        conductor.append(mido.MetaMessage("time_signature", numerator=num, denominator=den, time=pickup))
    else:
        conductor.append(mido.MetaMessage("time_signature", numerator=num, denominator=den))
    mid.tracks.append(conductor)
    for part in [notes] + ([under] if under else []):
        track, now, tick = mido.MidiTrack(), 0, 0
        for pitch, length in part:
            if pitch is not None:
                track.append(mido.Message("note_on", note=pitch, velocity=80, channel=channel, time=tick - now))
                track.append(mido.Message("note_off", note=pitch, velocity=0, channel=channel, time=length))
                now = tick + length
            tick += length
        mid.tracks.append(track)
    mid.save(path)
    return path


def notes_by_track(path: Path) -> dict[str, list[tuple[int, float, float, int, int]]]:
    """{track name: [(pitch, start, end, velocity, channel)]}, times in beats (quarter notes), by start."""
    mid = mido.MidiFile(path)
    out = {}
    for i, track in enumerate(mid.tracks):
        tick, open_, notes = 0, defaultdict(list), []
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                open_[msg.channel, msg.note].append((tick, msg.velocity))
            elif msg.type in ("note_on", "note_off") and open_[msg.channel, msg.note]:
                start, vel = open_[msg.channel, msg.note].pop(0)
                notes.append((msg.note, start / mid.ticks_per_beat, tick / mid.ticks_per_beat, vel, msg.channel))
        if notes:
            out[track.name or f"track {i}"] = sorted(notes, key=lambda n: (n[1], n[0]))
    return out


def all_notes(path: Path) -> list[tuple[int, float, float]]:
    return sorted((p, s, e) for notes in notes_by_track(path).values() for p, s, e, _, _ in notes)


def time_signatures(path: Path) -> list[tuple[float, int, int]]:
    mid = mido.MidiFile(path)
    out = []
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "time_signature":
                out.append((tick / mid.ticks_per_beat, msg.numerator, msg.denominator))
    return sorted(out)


def sounding(notes, beat: float) -> list[int]:
    return sorted(p for p, s, e, *_ in notes if s <= beat < e)


def part_notes(path: Path) -> list:
    return [n for name, notes in notes_by_track(path).items() if name != "player" for n in notes]


@pytest.fixture(scope="module")
def ode(tmp_path_factory) -> tuple[Path, Path]:
    """Ode to Joy and its harmonisation (seed 1)."""
    folder = tmp_path_factory.mktemp("ode")
    tune = write_tune(folder / "ode.mid", ODE)
    out = folder / "out.mid"
    r = run("harmonise", tune, out, "--seed", 1)
    assert r.exit_code == 0, r.output
    return tune, out


def test_every_melody_note_is_kept_on_the_player_track(ode):
    tune, out = ode
    player = notes_by_track(out)["player"]
    assert sorted((p, s, e) for p, s, e, *_ in player) == all_notes(tune)


def test_three_parts_under_the_tune_make_four_part_chords_on_its_beats(ode):
    tune, out = ode
    player, parts = notes_by_track(out)["player"], part_notes(out)
    beats = [b for b in range(32) if sounding(player, b)]
    assert len(beats) == 32
    common = 0
    for b in beats:
        top, = sounding(player, b)
        chord = sounding(parts, b)
        assert len(chord) == 3, (b, top, chord)
        assert max(chord) <= top and min(chord) <= top - 12, (b, top, chord)
        common += is_common_chord([top, *chord])
    assert common / len(beats) >= 0.9, f"{common} of {len(beats)} beats make a common chord"


def test_the_same_seed_writes_the_same_file(ode, tmp_path):
    tune, out = ode
    again = tmp_path / "again.mid"
    assert run("harmonise", tune, again, "--seed", 1).exit_code == 0
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.mid"
    assert run("harmonise", tune, other, "--seed", 2).exit_code == 0  # may or may not differ: it must play


@pytest.mark.parametrize("notes, meter, pickup, beat", [(WALTZ, (3, 4), Q, 1.0), (JIG, (6, 8), E, 1.5)],
                         ids=["3/4 waltz", "6/8 jig"])
def test_the_tunes_meter_and_pickup_are_kept_and_the_chords_fall_on_its_beats(tmp_path, notes, meter, pickup,
                                                                               beat):
    tune = write_tune(tmp_path / "tune.mid", notes, meter, pickup)
    out = tmp_path / "out.mid"
    r = run("harmonise", tune, out, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert time_signatures(out) == time_signatures(tune)
    before, after = read_midi(tune), read_midi(out)
    assert (after.meter, after.bar_start) == (before.meter, before.bar_start)
    parts = part_notes(out)
    assert parts
    bar_line = pickup / TPB  # beats (quarters) from the start to the first full bar
    bar = meter[0] * 4 / meter[1]
    struck = sorted({s for _, s, *_ in parts})
    for s in struck:
        assert ((s - bar_line) / beat) == pytest.approx(round((s - bar_line) / beat)), f"a chord off the beat at {s}"
    # Every beat from the first bar line on where the tune sounds has its chord.
    end = max(e for _, _, e in all_notes(tune))
    player = notes_by_track(out)["player"]
    b = bar_line
    while b < end:
        if sounding(player, b):
            assert len(sounding(parts, b)) == 3, f"no chord under the tune at {b}"
        b += beat
    # The metrical accent: the loudest chords are the ones struck on the tune's bar lines.
    velocity = {s: v for _, s, _, v, _ in parts}
    downbeats = {s for s in struck if ((s - bar_line) / bar) == pytest.approx(round((s - bar_line) / bar))}
    assert downbeats and len(downbeats) < len(struck)
    loudest = max(velocity.values())
    assert {s for s in struck if velocity[s] == loudest} == downbeats


def test_voices_on_channels_put_alto_tenor_and_bass_on_channels_2_to_4_one_note_at_a_time(tmp_path):
    tune = write_tune(tmp_path / "ode.mid", ODE)
    out = tmp_path / "out.mid"
    r = run("harmonise", tune, out, "--seed", 1, "--voices-on-channels")
    assert r.exit_code == 0, r.output
    tracks = notes_by_track(out)
    assert "improviser" not in tracks
    for name, channel in (("alto", 1), ("tenor", 2), ("bass", 3)):  # mido counts channels from 0
        notes = tracks[name]
        assert {n[4] for n in notes} == {channel}, name
        for (_, _, end, *_), (_, start, *_) in zip(notes, notes[1:]):
            assert start >= end, f"{name} plays two notes at once at {start}"
    # Each part stays in its place: the alto over the tenor over the bass.
    for b in range(32):
        a, t, bass = (sounding(tracks[name], b) for name in ("alto", "tenor", "bass"))
        assert len(a) == len(t) == len(bass) == 1 and a[0] > t[0] > bass[0], b


def test_a_tune_two_octaves_up_gets_its_parts_in_their_ranges_under_it(tmp_path):
    """Ode to Joy from F#6 (a descant's, a piccolo's): above the alto's reach, once a traceback."""
    tune = write_tune(tmp_path / "high.mid", [(p + 24, n) for p, n in ODE])
    out = tmp_path / "out.mid"
    r = run("harmonise", tune, out, "--seed", 1)
    assert r.exit_code == 0, r.output
    player, parts = notes_by_track(out)["player"], part_notes(out)
    assert sorted((p, s, e) for p, s, e, *_ in player) == all_notes(tune)
    for b in range(32):
        top, = sounding(player, b)
        chord = sounding(parts, b)
        assert len(chord) == 3 and 36 <= min(chord) and max(chord) <= 74 and is_common_chord([top, *chord]), b


def test_a_tune_too_low_for_three_parts_under_it_is_one_line(tmp_path):
    tune = write_tune(tmp_path / "low.mid", [(p - 24, n) for p, n in ODE])  # from D2: once a traceback
    out = tmp_path / "out.mid"
    err = one_line_error(run("harmonise", tune, out), "too low", "transpose it up an octave")
    assert err.startswith("error:")
    assert not out.exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    tune = write_tune(tmp_path / "ode.mid", ODE)
    out = tmp_path / "out.mid"
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are not the notes you are looking for")
    empty = tmp_path / "empty.mid"
    mido.MidiFile(tracks=[mido.MidiTrack()]).save(empty)
    drums = write_tune(tmp_path / "drums.mid", [(36, E)] * 16, channel=9)
    long = write_tune(tmp_path / "long.mid", [(60 + i % 12, Q) for i in range(25 * 120)], bpm=120)  # 25 minutes
    # 15 minutes at 240 bpm: 3,600 beats, more than the 2,400 it takes (once refused as over "20 minutes").
    fast = write_tune(tmp_path / "fast.mid", [(60 + i % 12, Q) for i in range(15 * 240)], bpm=240)
    folder = tmp_path / "folder.mid"
    folder.mkdir()
    cases = [
        ((not_midi, out), ["not a readable MIDI file"]),
        ((empty, out), ["no pitched notes"]),
        ((drums, out), ["no pitched notes"]),
        ((long, out), ["25 minutes", "20"]),
        ((fast, out), ["3600 beats", "2400"]),
        ((tune, tmp_path / "no" / "such" / "o.mid"), ["does not exist"]),
        ((tune, folder), ["is a folder"]),
    ]
    for args, words in cases:
        err = one_line_error(run("harmonise", *args), *words)
        assert err.startswith("error:"), err
        assert not out.exists(), args
        assert not (tmp_path / "no").exists() and not any(folder.iterdir())


def test_a_polyphonic_file_is_harmonised_on_its_top_line_with_one_line_saying_so(tmp_path):
    melody = [(Fs, Q), (G, Q), (A, Q), (G, Q), (Fs, Q), (64, Q), (D, 2 * Q)]
    under = [(D, Q), (59, Q), (Fs, Q), (64, Q), (D, Q), (61, Q), (57, 2 * Q)]
    tune = write_tune(tmp_path / "two.mid", melody, under=under)
    out = tmp_path / "out.mid"
    r = run("harmonise", tune, out, "--seed", 1)
    assert r.exit_code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if "top line" in line]
    assert len(warning) == 1 and "harmonised its top line" in warning[0], r.stderr
    player = notes_by_track(out)["player"]
    assert [(p, s, e) for p, s, e, *_ in player] == [(p, i, i + 1 + (i == 6)) for i, (p, _) in enumerate(melody)]
