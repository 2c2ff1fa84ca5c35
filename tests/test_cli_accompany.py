"""`improviser accompany` and `--key` through typer's CliRunner, with the shipped checkpoint: a harmoniser
for a melody file, the same engine as live, and one clear line for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from improviser.music.analysis import estimate_key, parse_key
from improviser.music.encoding import TimedNote, read_midi, write_midi
from improviser.testing import cli, one_line_error

G_MAJOR_TUNE = [67, 71, 74, 71, 72, 76, 74, 71, 69, 72, 71, 67, 66, 69, 67, 67]  # 4 bars of quarter notes


run = cli


@pytest.fixture
def tune(tmp_path) -> Path:
    path = tmp_path / "tune.mid"
    notes = [TimedNote(p, i * 0.5, i * 0.5 + 0.48, 90) for i, p in enumerate(G_MAJOR_TUNE)]
    write_midi(path, {"tune": notes}, bpm=120)
    return path


def tracks(path: Path) -> dict[str, list]:
    return {inst.name: inst.notes for inst in pretty_midi.PrettyMIDI(str(path)).instruments}


def test_accompany_writes_the_tune_on_the_player_track_and_plays_along_from_the_start(tune, tmp_path):
    out = tmp_path / "out.mid"
    r = run("accompany", tune, out, "--seed", 1)
    assert r.exit_code == 0, r.output
    t = tracks(out)
    assert [n.pitch for n in t["player"]] == G_MAJOR_TUNE  # the melody, as heard, at its own times
    assert [round(n.start, 3) for n in t["player"]] == [round(i * 0.5, 3) for i in range(16)]
    own = t["improviser"]
    assert own and min(n.start for n in own) < 0.5  # it plays along from the first beat
    assert mido.MidiFile(out).length == pytest.approx(8.0 + 4 * 0.5, abs=0.01)  # the tune at 120 bpm + 4 beats
    # The same seed gives the same accompaniment: a reproducible live session.
    again = tmp_path / "again.mid"
    assert run("accompany", tune, again, "--seed", 1).exit_code == 0
    assert [(n.pitch, n.start) for n in tracks(again)["improviser"]] == [(n.pitch, n.start) for n in own]


def test_respond_mode_is_silent_while_the_tune_plays_then_answers(tune, tmp_path):
    out = tmp_path / "out.mid"
    r = run("accompany", tune, out, "--mode", "respond", "--seed", 2, "--extra-beats", 16)
    assert r.exit_code == 0, r.output
    own = tracks(out)["improviser"]
    assert own, "it never answered"
    # The tune's last note ends at 7.98 s; it waits 2 beats (1 s at 120 bpm) of silence.
    assert min(n.start for n in own) >= 8.0 + 1.0 - 0.125 - 1e-6


def test_bad_input_is_one_line_and_writes_nothing(tune, tmp_path):
    out = tmp_path / "out.mid"
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are not the notes you are looking for")
    empty = tmp_path / "empty.mid"
    write_midi(empty, {"nothing": []}, bpm=120)
    drums = tmp_path / "drums.mid"
    pm = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(0, is_drum=True)
    kit.notes = [pretty_midi.Note(100, 36 + i % 3, i * 0.25, i * 0.25 + 0.1) for i in range(16)]
    pm.instruments.append(kit)
    pm.write(str(drums))
    hours = tmp_path / "hours.mid"
    write_midi(hours, {"drone": [TimedNote(60, 0.0, 3 * 3600.0), TimedNote(64, 3 * 3600.0 - 1, 3 * 3600.0)]},
               bpm=120)
    long = tmp_path / "long.mid"  # 40 minutes: readable, but more than accompany takes
    write_midi(long, {"drone": [TimedNote(60 + i % 12, i * 1.0, i * 1.0 + 0.9) for i in range(2400)]}, bpm=120)
    cases = [
        ((not_midi, out), ["not a readable MIDI file"]),
        ((tmp_path / "missing.mid", out), ["no such MIDI file"]),
        ((empty, out), ["no pitched notes"]),
        ((drums, out), ["no pitched notes"]),
        ((hours, out), ["too long"]),
        ((long, out), ["minutes"]),
        ((tune, out, "--key", "H minor"), ["--key", "not a key"]),
        ((tune, out, "--key", "D dorian"), ["--key"]),
        ((tune, out, "--mode", "duet"), ["--mode"]),
        ((tune, out, "--bpm", 0), ["--bpm"]),
        ((tune, tmp_path / "no" / "such" / "folder" / "o.mid"), ["does not exist"]),
    ]
    for args, words in cases:
        one_line_error(run("accompany", *args), *words)
        assert not out.exists()


def test_a_named_key_holds_what_it_plays_near_that_key(tmp_path):
    """--key pins the key memories: over eight keys, what it plays is in the named key or its relative
    far more often than chance (about 1 in 12), and nearly always within one accidental of it."""
    from improviser.music.listening_metrics import key_relation

    keys = ["F# minor", "Eb major", "A major", "C minor", "D major", "B minor", "Ab major", "E minor"]
    relations = []
    for i, name in enumerate(keys):
        out = tmp_path / f"k{i}.mid"
        r = run("generate", out, "--seconds", 10, "--seed", i, "--key", name)
        assert r.exit_code == 0, r.output
        tonic, mode = parse_key(name)
        relations.append(key_relation((tonic, mode), estimate_key(read_midi(out))[:2]))
    same = sum(r in ("same", "relative") for r in relations)
    close = sum(r != "far" for r in relations)
    assert same >= 3 and close >= 6, list(zip(keys, relations))


def test_a_bad_key_is_one_line_everywhere(tmp_path):
    out = tmp_path / "g.mid"
    for cmd in (["generate", out], ["record", out], ["play"]):
        one_line_error(run(*cmd, "--key", "Q major"), "--key")


def test_the_listening_figures_are_in_range_on_a_few_tunes(model):
    """The audition runs end to end on held-out tunes (the figures themselves are in the README)."""
    from improviser.live.audition import listening

    r = listening(model, n_melodies=4, progress=False)
    assert r["n_tunes"] == 4 and r["n_chorales"] > 20
    for k in r["keys"].values():
        assert 0.0 <= k["same_or_relative"] <= k["close"] <= 1.0
    bach = r["consonance"]["Bach: lower voices vs soprano"]
    assert 0.7 < bach["consonant_share"] < 0.82  # his three lower voices against his soprano
    assert np.isfinite(r["consonance"]["accompanying"]["notes_per_step"])


def test_a_checkpoint_from_before_listening_models_still_plays_and_refuses_a_key_in_one_line(tune, tmp_path):
    import torch

    from improviser.model import BachLSTM, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    old = tmp_path / "old.pt"
    save_checkpoint(old, BachLSTM(ModelConfig(hidden=32, layers=1, head="nade", nade_hidden=8)))
    r = run("accompany", tune, tmp_path / "a.mid", "--checkpoint", old, "--seed", 1)
    assert r.exit_code == 0, r.output  # it hears the player merged into its own frame, as before
    r = run("generate", tmp_path / "g.mid", "--checkpoint", old, "--seconds", 2)
    assert r.exit_code == 0, r.output
    one_line_error(run("generate", tmp_path / "k.mid", "--checkpoint", old, "--key", "D minor"), "no key memory")
    assert not (tmp_path / "k.mid").exists()
