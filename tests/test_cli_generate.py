"""`improviser generate` and `improviser train` through typer's CliRunner, with the shipped checkpoint."""

import os
import pickle
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from improviser.music.encoding import TimedNote, write_midi
from improviser.testing import cli, one_line_error

DATA = Path(__file__).parent / "data"


run = cli


def test_generate_writes_30_seconds_of_varied_polyphony(tmp_path):
    out = tmp_path / "out.mid"
    r = run("generate", out, "--seconds", 30, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert mido.MidiFile(out).length == pytest.approx(30.0, abs=1e-3)
    pm = pretty_midi.PrettyMIDI(str(out))
    notes = [n for inst in pm.instruments for n in inst.notes]
    lengths = np.array([n.end - n.start for n in notes])
    assert len(notes) > 60
    assert len(np.unique(np.round(lengths, 2))) >= 3, "note lengths should vary"
    assert lengths.max() < 4.0, "no note should hang for seconds"
    voices = (pm.get_piano_roll(fs=20) > 0).sum(axis=0)
    assert np.mean(voices >= 2) > 0.5, "two or more voices most of the time"
    # Repeated notes are re-struck, not merged: some pitch is struck again right where it ended.
    by_pitch = {}
    for n in sorted(notes, key=lambda n: n.start):
        by_pitch.setdefault(n.pitch, []).append(n)
    assert any(abs(a.end - b.start) < 1e-3 for ns in by_pitch.values() for a, b in zip(ns, ns[1:]))


def test_generate_options_change_the_music(tmp_path):
    run("generate", tmp_path / "a.mid", "--seconds", 8, "--seed", 1, "--bpm", 120)
    run("generate", tmp_path / "b.mid", "--seconds", 8, "--seed", 1, "--bpm", 120)
    run("generate", tmp_path / "c.mid", "--seconds", 8, "--seed", 2, "--bpm", 120)
    a, b, c = ((tmp_path / f).read_bytes() for f in ("a.mid", "b.mid", "c.mid"))
    assert a == b and a != c
    r = run("generate", tmp_path / "p.mid", "--seconds", 8, "--prime", DATA / "bwv10_7.mid", "--stability", 3)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,words", [
    (["--seconds", "0"], ["--seconds"]),
    (["--seconds", "-5"], ["--seconds"]),
    (["--bpm", "0"], ["--bpm"]),
    (["--bpm", "100000"], ["--bpm"]),
    (["--temperature", "-1"], ["temperature"]),
    (["--stability", "0"], ["stability"]),
])
def test_absurd_numbers_are_one_line_errors(tmp_path, args, words):
    one_line_error(run("generate", tmp_path / "o.mid", *args), *words)
    assert not (tmp_path / "o.mid").exists()


def test_bad_files_are_one_line_errors(tmp_path):
    one_line_error(run("generate", tmp_path / "nope" / "o.mid"), "does not exist")
    one_line_error(run("generate", tmp_path), "is a folder")
    one_line_error(run("generate", tmp_path / "o.mid", "--checkpoint", tmp_path / "missing.pt"), "no such checkpoint")
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    one_line_error(run("generate", tmp_path / "o.mid", "--checkpoint", tmp_path / "junk.pt"), "junk.pt")
    (tmp_path / "text.mid").write_text("hello")
    one_line_error(run("generate", tmp_path / "o.mid", "--prime", tmp_path / "text.mid"), "not a readable MIDI")
    write_midi(tmp_path / "silent.mid", {"x": []}, 120, length=2)
    one_line_error(run("generate", tmp_path / "o.mid", "--prime", tmp_path / "silent.mid"), "no pitched notes")
    one_line_error(run("generate", tmp_path / "o.mid", "--prime", tmp_path / "gone.mid"), "no such MIDI file")


def test_unwritable_output_is_a_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions; a path under a file fails for everyone
            target = tmp_path / "file.txt"
            target.write_text("x")
            one_line_error(run("generate", target / "o.mid"), "o.mid")
        else:
            one_line_error(run("generate", ro / "o.mid"), "permission denied")
    finally:
        ro.chmod(0o700)


def test_hostile_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format": "improviser-checkpoint", "version": 1, "model": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(Evil()))
    for ck in ("evil.pt", "evil2.pt"):
        one_line_error(run("generate", tmp_path / "o.mid", "--checkpoint", tmp_path / ck), ck)
    assert not marker.exists()


def test_debug_shows_the_traceback(tmp_path):
    r = run("--debug", "generate", tmp_path / "o.mid", "--seconds", "0")
    assert r.exit_code == 1 and "Traceback" in r.stderr


def test_train_on_own_files_gives_a_checkpoint_that_plays(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path / "cache"))
    files = sorted(DATA.glob("bwv*.mid"))[:4]
    ck = tmp_path / "mine.pt"
    r = run("train", *files, "--out", ck, "--epochs", 2, "--hidden", 48)
    assert r.exit_code == 0, r.output
    assert "best validation loss" in r.stderr
    r = run("generate", tmp_path / "mine.mid", "--checkpoint", ck, "--seconds", 10)
    assert r.exit_code == 0, r.output
    assert mido.MidiFile(tmp_path / "mine.mid").length == pytest.approx(10.0, abs=1e-3)


def test_train_input_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path / "cache"))
    one_line_error(run("train", "--out", tmp_path / "x.pt"), "give MIDI files")
    (tmp_path / "empty").mkdir()
    one_line_error(run("train", tmp_path / "empty", "--out", tmp_path / "x.pt"), "no usable MIDI")
    one_line_error(run("train", "--corpus", "mozart", "--out", tmp_path / "x.pt"), "unknown corpus")
    one_line_error(run("train", DATA, "--out", tmp_path / "x.pt", "--epochs", 0), "--epochs")
    write_midi(tmp_path / "one.mid", {"x": [TimedNote(60, 0, 1)]}, 120)
    one_line_error(run("train", tmp_path / "one.mid", "--out", tmp_path / "x.pt"), "at least 2 pieces")


@pytest.mark.parametrize("meter", ["3/4", "6/8"])
def test_generate_in_a_meter_writes_it_and_accents_its_bar_lines(tmp_path, meter):
    """--meter: the file's time signature, and its own loudest notes struck on the bar lines of that meter."""
    from improviser.music.encoding import Meter, read_midi

    out = tmp_path / "m.mid"
    r = run("generate", out, "--seconds", 20, "--seed", 3, "--meter", meter)
    assert r.exit_code == 0, r.output
    grid = read_midi(out)
    assert grid.meter == Meter.parse(meter) and grid.bar_start == 0
    struck = np.flatnonzero(grid.onset.any(axis=1))
    loud = grid.velocity.max(axis=1)[struck]
    downbeats = struck % grid.steps_per_bar == 0
    assert downbeats.any() and loud[downbeats].min() > loud[~downbeats].max()


def test_a_meter_that_is_none_is_a_one_line_error(tmp_path):
    one_line_error(run("generate", tmp_path / "m.mid", "--meter", "5/3"), "--meter")


def test_record_writes_its_meter_too(tmp_path):
    """record --meter (here with no MIDI system: the file is still written) puts the meter in the session file."""
    from improviser.music.encoding import Meter, read_midi

    out = tmp_path / "r.mid"
    r = run("record", out, "--seconds", 4, "--seed", 2, "--meter", "3/4")
    assert r.exit_code == 0, r.output
    assert read_midi(out).meter == Meter(3, 4)
