"""Four voices: the harmony counts on hand-made chords and on Bach, voice leading as it plays (the issue's bars,
with the shipped checkpoint), soprano..bass on channels 1-4 in files and live, and a checkpoint without voices."""

from __future__ import annotations

import mido
import numpy as np
import pretty_midi

from improviser.live.engine import record
from improviser.model.evaluate import harmony
from improviser.model.generator import StreamingGenerator
from improviser.music.encoding import Frame, Grid, TimedNote, write_midi
from improviser.music.harmony_metrics import harmony_counts, harmony_summary, is_common_chord, parallels
from improviser.music.voices import VOICE_NAMES, VoiceChannels, voice_tracks
from improviser.testing import cli, one_line_error


def test_parallels_are_consecutive_fifths_and_octaves_in_similar_motion():
    c, d = [48, 55, 64, 72], [50, 57, 65, 74]  # C major -> D minor, every voice up a step
    assert parallels(c, d) == 2  # bass-tenor fifths, bass-soprano octaves
    assert parallels([48, 55, 64, 72], [43, 55, 62, 71]) == 0  # the tenor holds: no parallel
    assert parallels([48, 55, 64, 72], [53, 57, 65, 72]) == 0  # contrary and oblique motion
    assert parallels([48, 55, 64, 67], [50, 57, 65, 69]) == 3  # (B,T) and (B,S) fifths, (T,S) octaves


def test_common_chords_complete_or_without_the_fifth():
    assert is_common_chord([60, 64, 67]) and is_common_chord([57, 60, 64, 69])  # C major, A minor doubled
    assert is_common_chord([55, 59, 65]) and is_common_chord([55, 59, 62, 65])  # G7 without / with its fifth
    assert is_common_chord([59, 62, 65])  # B diminished
    assert not is_common_chord([60, 62, 64]) and not is_common_chord([60, 65, 67])  # a cluster, a sus4


def test_bach_on_held_out_chorales_is_four_part_writing():
    from improviser.model.data import load_bach_chorales, split

    _, valid = split(load_bach_chorales(progress=False))
    h = harmony_summary(harmony_counts(p.grid) for p in valid)
    assert h["parallels_per_100"] < 6 and h["common_chords"] > 0.85 and h["four_notes"] > 0.7, h


def test_it_leads_four_voices_like_bach_as_it_plays(model):
    """The issue's bars on 20 free 30-second pieces at 100 bpm: parallels <= 6 per 100 changes, common chords
    on >= 85 % of beats, four notes on >= 70 % of steps; the model's first draws alone miss all three."""
    r = harmony(model, [], n_pieces=20, n_steps=200)
    ours, raw = r["as it plays"], r["first draws only"]
    print(ours, raw)
    assert ours["parallels_per_100"] <= 6 and ours["common_chords"] >= 0.85 and ours["four_notes"] >= 0.70
    assert raw["parallels_per_100"] > 10 and raw["common_chords"] < 0.85 and raw["four_notes"] < 0.70
    assert ours["changes"] >= 20 * 20  # it moves: a new chord on most beats, not four notes held still


def test_voice_channels_keep_each_note_on_its_channel_from_on_to_off():
    voices = VoiceChannels()
    sounding = np.zeros(128, bool)
    opened: dict[int, int] = {}
    frames = [Frame.of([48, 55, 64, 72]), Frame.of([50], held=[55, 64, 72]), Frame.of([], held=[50, 55, 64]),
              Frame.of([47, 67], held=[55, 64]), Frame.silent()]
    for frame in frames:
        for m in voices.messages(sounding, frame):
            if m.type == "note_on":
                opened[m.note] = m.channel
            else:
                assert opened.pop(m.note) == m.channel
        sounding = frame.sound.copy()
    assert not opened
    first = voices_of(VoiceChannels(), Frame.of([48, 55, 64, 72]))
    assert first == {72: 0, 64: 1, 55: 2, 48: 3}  # soprano on channel 1 .. bass on 4


def voices_of(vc: VoiceChannels, frame: Frame) -> dict[int, int]:
    return {m.note: m.channel for m in vc.messages(np.zeros(128, bool), frame) if m.type == "note_on"}


def test_generate_puts_four_voices_on_four_channels_and_tracks(tmp_path):
    out = tmp_path / "satb.mid"
    r = cli("generate", out, "--seconds", 20, "--seed", 2, "--voices-on-channels", "--program", 19)
    assert r.exit_code == 0, r.output
    parts = {i.name: i for i in pretty_midi.PrettyMIDI(str(out)).instruments}
    assert list(parts) == list(VOICE_NAMES)
    means = [np.mean([n.pitch for n in parts[name].notes]) for name in VOICE_NAMES]
    assert all(parts[name].notes for name in VOICE_NAMES) and means == sorted(means, reverse=True), means
    mid = mido.MidiFile(out)
    for channel, track in enumerate(mid.tracks[1:]):
        msgs = [m for m in track if not m.is_meta]
        assert msgs[0].type == "program_change" and (msgs[0].channel, msgs[0].program) == (channel, 19)
        assert {m.channel for m in msgs} == {channel}


def test_live_engine_session_has_a_track_per_voice(model, tmp_path):
    gen = StreamingGenerator(model, 0.9, 1, seed=3)
    out = tmp_path / "live.mid"
    record(gen, out, 8.0, 120.0, voices=True, program=48)  # no port: a virtual clock
    names = [t.name for t in mido.MidiFile(out).tracks[1:]]
    assert names == [*VOICE_NAMES, "player"]  # the player's track is there, empty
    parts = {i.name: i.notes for i in pretty_midi.PrettyMIDI(str(out)).instruments}
    assert sum(len(parts[n]) for n in VOICE_NAMES) > 20


def test_voice_tracks_hold_every_note_of_the_grid():
    onset = np.zeros((8, 128), bool)
    sound = np.zeros((8, 128), bool)
    for p in (48, 55, 64, 72):
        onset[0, p] = sound[0:4, p] = True
    for p in (50, 57, 65, 74):
        onset[4, p] = sound[4:8, p] = True
    tracks = voice_tracks(Grid(onset, sound, 4, 4, 120.0))
    assert [[n.pitch for n in tracks[v]] for v in VOICE_NAMES] == [[72, 74], [64, 65], [55, 57], [48, 50]]


def test_voices_on_channels_with_a_checkpoint_that_has_no_voices_is_one_line(tmp_path, monkeypatch):
    """A model trained on single melodies has no four voices: generate and accompany say so and stop."""
    monkeypatch.setenv("IMPROVISER_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for i in range(3):
        line = [TimedNote(int(60 + rng.integers(-5, 8)), k * 0.25, k * 0.25 + 0.24) for k in range(64)]
        write_midi(tmp_path / f"tune{i}.mid", {"tune": line}, bpm=120)
    ck = tmp_path / "melodies.pt"
    r = cli("train", *sorted(tmp_path.glob("tune*.mid")), "--out", ck, "--epochs", 1, "--hidden", 16)
    assert r.exit_code == 0, r.output
    assert cli("generate", tmp_path / "ok.mid", "--checkpoint", ck, "--seconds", 2).exit_code == 0
    r = cli("generate", tmp_path / "x.mid", "--checkpoint", ck, "--seconds", 2, "--voices-on-channels")
    one_line_error(r, "--voices-on-channels", "four-part")
    r = cli("accompany", tmp_path / "tune0.mid", tmp_path / "y.mid", "--checkpoint", ck, "--voices-on-channels")
    one_line_error(r, "--voices-on-channels", "four-part")
    assert not (tmp_path / "x.mid").exists() and not (tmp_path / "y.mid").exists()


def test_evaluate_harmony_prints_the_table():
    r = cli("evaluate", "--harmony", "--pieces", 2, "--seconds", 5)
    assert r.exit_code == 0, r.output
    assert "parallel 5ths/8ves" in r.stdout and "Bach (held-out chorales)" in r.stdout


def test_accompanying_the_players_line_is_one_of_the_four_voices(model):
    """Accompanying 16 held-out folk tunes live (virtual clock) with its draws (the accompanist off: the way it
    plays a line a player holds more notes than that under), it leads its voices around the tune's note: the
    tune and its notes together make common chords on more beats and four voices more often than when it
    leads only its own notes, and fit the tune no worse (60 tunes, `evaluate --listening`: common chords
    51 % vs 40 %, parallels 10.5 vs 24.8 per 100 changes)."""
    from improviser.live.audition import accompaniment
    from improviser.music.listening_metrics import consonance, consonance_summary
    from improviser.music.melodies import load_heldout_melodies, place

    rng = np.random.default_rng(0)
    tunes = [place(m, rng) for m in load_heldout_melodies(16, 0)]
    texture, fit = {True: [], False: []}, {True: [], False: []}
    for i, m in enumerate(tunes):
        for voice in (True, False):
            heard, own = accompaniment(model, m, i, voice_with_player=voice, accompanist=False)
            texture[voice].append(harmony_counts(heard.sound | own.sound))
            fit[voice].append(consonance(heard, own))
    led, alone = harmony_summary(texture[True]), harmony_summary(texture[False])
    print(led, alone)
    assert led["common_chords"] >= alone["common_chords"] + 0.04
    assert led["four_notes"] > alone["four_notes"] and led["changes"] > alone["changes"]
    assert consonance_summary(fit[True])["consonant_share"] >= consonance_summary(fit[False])["consonant_share"] - 0.02
