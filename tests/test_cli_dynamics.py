"""How it sounds in a synth: dynamics that follow the player, its own MIDI channel and General MIDI program,
and a key held to -- through the CLI, with the shipped checkpoint and real MIDI files."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from improviser.music.analysis import estimate_key, parse_key
from improviser.music.encoding import DEFAULT_PROGRAM, TimedNote, read_midi, write_midi
from improviser.music.listening_metrics import key_relation
from improviser.testing import cli, one_line_error

PHRASE = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60, 64, 67, 72, 67, 60]  # C major, in eighth notes


def phrase_file(path: Path, velocity: int, tonic: int = 0) -> Path:
    notes = [TimedNote(p + tonic, i * 0.25, i * 0.25 + 0.22, velocity) for i, p in enumerate(PHRASE)]
    write_midi(path, {"tune": notes}, bpm=120)
    return path


def tracks(path: Path) -> dict[str, list]:
    return {inst.name: inst.notes for inst in pretty_midi.PrettyMIDI(str(path)).instruments}


def answer_velocity(tmp_path: Path, velocity: int, seed: int, *extra) -> float:
    out = tmp_path / f"answer-{velocity}-{seed}.mid"
    r = cli("accompany", phrase_file(tmp_path / f"phrase-{velocity}.mid", velocity), out, "--mode", "respond",
            "--seed", seed, "--extra-beats", 16, *extra)
    assert r.exit_code == 0, r.output
    own = tracks(out)["improviser"]
    assert own, "it never answered"
    return float(np.mean([n.velocity for n in own]))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_loud_phrase_gets_a_louder_answer_than_the_same_phrase_played_softly(tmp_path, seed):
    loud, soft = answer_velocity(tmp_path, 110, seed), answer_velocity(tmp_path, 35, seed)
    assert loud - soft >= 25, (loud, soft)
    assert 95 <= loud <= 120 and 25 <= soft <= 50, (loud, soft)  # near the player's level, with the accents


def test_velocity_bounds_hold_however_the_player_plays(tmp_path):
    assert answer_velocity(tmp_path, 110, 1, "--velocity", "50..70") <= 70
    assert answer_velocity(tmp_path, 20, 1, "--velocity", "50..70") >= 50


def test_nobody_heard_keeps_the_metrical_accents(tmp_path):
    out = tmp_path / "free.mid"
    assert cli("generate", out, "--seconds", 8, "--seed", 3).exit_code == 0
    velocities = {n.velocity for n in tracks(out)["improviser"]}
    assert velocities <= {96, 84, 72} and len(velocities) >= 2


def test_channel_and_program_are_in_the_file_and_the_default_program_is_sent(tmp_path):
    out = tmp_path / "organ.mid"
    assert cli("generate", out, "--seconds", 4, "--seed", 1, "--channel", 3, "--program", 19).exit_code == 0
    msgs = [m for track in mido.MidiFile(out).tracks for m in track if not m.is_meta]
    assert msgs[0].type == "program_change" and (msgs[0].channel, msgs[0].program) == (2, 19)
    assert {m.channel for m in msgs} == {2}
    out = tmp_path / "default.mid"
    assert cli("generate", out, "--seconds", 4, "--seed", 1).exit_code == 0
    changes = [m for track in mido.MidiFile(out).tracks for m in track if m.type == "program_change"]
    assert [(m.channel, m.program) for m in changes] == [(0, DEFAULT_PROGRAM)]
    out = tmp_path / "none.mid"
    assert cli("generate", out, "--seconds", 4, "--seed", 1, "--program", -1).exit_code == 0
    assert not [m for track in mido.MidiFile(out).tracks for m in track if m.type == "program_change"]


def test_accompany_writes_its_program_on_its_own_track(tmp_path):
    out = tmp_path / "acc.mid"
    r = cli("accompany", phrase_file(tmp_path / "p.mid", 80), out, "--seed", 1, "--channel", 2, "--program", 52)
    assert r.exit_code == 0, r.output
    by_track = {}
    for track in mido.MidiFile(out).tracks:
        name = next((m.name for m in track if m.type == "track_name"), "")
        by_track[name] = [m for m in track if not m.is_meta]
    assert by_track["improviser"][0].type == "program_change" and by_track["improviser"][0].program == 52
    assert {m.channel for m in by_track["improviser"]} == {1}
    assert {m.channel for m in by_track["player"]} == {0}


@pytest.mark.parametrize("args, words", [
    (["--program", 200], ["--program", "0..127"]),
    (["--channel", 0], ["--channel", "1..16"]),
    (["--channel", 17], ["--channel", "1..16"]),
    (["--velocity", "90..40"], ["--velocity", "LO..HI"]),
    (["--velocity", "loud"], ["--velocity"]),
])
def test_bad_channel_program_or_velocity_is_one_line(tmp_path, args, words):
    r = cli("generate", tmp_path / "x.mid", "--seconds", 2, *args)
    one_line_error(r, *words)
    assert not (tmp_path / "x.mid").exists()


def test_thru_without_an_input_is_one_line(tmp_path):
    one_line_error(cli("record", tmp_path / "x.mid", "--seconds", 1, "--thru"), "--thru", "--input")


@pytest.mark.parametrize("tonic", [0, 6, 9])
def test_primed_answers_hold_the_phrases_key(tmp_path, tonic):
    """After the phrase (a file, heard as a player's), what it plays on stays in the phrase's key or its
    relative in most of 4 seeds; with the hold off it drifts more often (the measured gain, in small)."""
    phrase = phrase_file(tmp_path / "phrase.mid", 90, tonic)
    key = (tonic, "major")

    def in_key(seed: int) -> bool:
        out = tmp_path / f"g{seed}.mid"
        assert cli("generate", out, "--seconds", 8, "--bpm", 120, "--seed", seed, "--prime", phrase).exit_code == 0
        return key_relation(key, estimate_key(read_midi(out))) in ("same", "relative")

    assert sum(in_key(seed) for seed in range(4)) >= 3


def test_a_named_key_is_held(tmp_path):
    out = tmp_path / "d.mid"
    assert cli("generate", out, "--seconds", 16, "--seed", 5, "--key", "D minor").exit_code == 0
    assert key_relation(parse_key("D minor"), estimate_key(read_midi(out))) in ("same", "relative")
