"""Accompanying a line live: three parts under it, a chord a beat (improviser.model.accompanist), through
`improviser accompany` on real files (the tune's meter, pickup and accents kept) and on held-out tune files
measured as `evaluate --accompaniment` measures them."""

from __future__ import annotations

from collections import defaultdict

import mido
import numpy as np
from test_harmonise import JIG, ODE, WALTZ, notes_by_track, write_tune

from improviser.cli import _invoke_self
from improviser.live.accompaniment_eval import evaluate_accompaniment
from improviser.music.encoding import read_midi
from improviser.music.harmony_metrics import is_common_chord
from improviser.testing import cli as run


def signatures(path) -> list[tuple[float, int, int]]:
    mid = mido.MidiFile(path)
    out, tick = [], 0
    for msg in mido.merge_tracks(mid.tracks):
        tick += msg.time
        if msg.type == "time_signature":
            out.append((tick / mid.ticks_per_beat, msg.numerator, msg.denominator))
    return out


def test_accompanying_ode_to_joy_puts_three_parts_under_it_with_a_chord_on_most_beats(tmp_path):
    melody = write_tune(tmp_path / "ode.mid", ODE)
    out = tmp_path / "out.mid"
    r = run("accompany", melody, out, "--seed", "1")
    assert r.exit_code == 0, r.output
    tune, own = read_midi(melody), notes_by_track(out)["improviser"]
    beats = chords = under = bass = 0
    for beat in range(1, 30):  # from the second beat: on the first it has heard nothing yet
        t = float(beat)
        top = max(p for p in np.flatnonzero(tune.sound[4 * beat]))
        mine = sorted(p for p, s, e, *_ in own if s <= t + 1e-6 < e)
        beats += 1
        chords += is_common_chord([*mine, top])
        under += len(mine) == 3 and max(mine) < top
        bass += bool(mine) and top - min(mine) >= 12
    assert under == beats  # the tune on top of three parts on every beat
    assert bass >= 0.85 * beats  # the bar the accompaniment is held to (85 % of beats with a bass)
    assert chords >= 0.75 * beats  # it hears each note a step late: a leap onto a beat can catch it out


def test_accompany_keeps_a_3_4_and_a_6_8_tunes_bar_lines_and_accents_on_them(tmp_path):
    for name, notes, meter, pickup in (("waltz", WALTZ, (3, 4), 480), ("jig", JIG, (6, 8), 240)):
        melody = write_tune(tmp_path / f"{name}.mid", notes, meter=meter, pickup=pickup)
        out = tmp_path / f"{name}.out.mid"
        r = run("accompany", melody, out, "--seed", "2", "--extra-beats", "0")
        assert r.exit_code == 0, r.output
        assert signatures(out) == signatures(melody)
        source, written = read_midi(melody), read_midi(out)
        assert (written.meter, written.bar_start) == (source.meter, source.bar_start)
        # Its accents: the loudest of its notes are struck on the tune's downbeats, the softest between beats.
        bar = source.steps_per_bar
        by_place = defaultdict(list)
        for _, start, _, velocity, _ in notes_by_track(out)["improviser"]:
            pos = (round(start * 4) + source.bar_start) % bar
            by_place[source.time_signature.accent(pos)].append(velocity)
        assert by_place[0] and min(by_place[0]) > max(by_place[1] + by_place[2])


def test_on_held_out_tune_files_it_accompanies_as_a_harmoniser_does():
    """Eight files of the tuning part through `improviser accompany`, counted as `evaluate --accompaniment` counts
    (30 report files: consonant 76 %, on top 99 %, bass 94 %, common chords 81 %, four voices 95 %, parallels 3.1
    per 100; before the accompanist 74 / 59 / 34 / 36 / 36 % / 17.3)."""
    result = evaluate_accompaniment(_invoke_self, ["accompany"], n_tunes=8, part="tune", progress=False)
    live = result["rows"]["accompany (live)"]
    assert live["failed"] == 0
    assert live["on_top"] >= 0.95 and live["bass"] >= 0.85 and live["four_voices"] >= 0.8
    assert live["common_chord"] >= 0.65 and live["consonant"] >= 0.7
    assert live["parallels_per_100"] <= 8


def test_the_models_log_p_of_given_frames_is_torchs(model):
    """NumpyLSTM.frame_log_probs (what the accompanist and nothing else asks of the model) against the torch
    model's own head, for frames of 0 to 5 notes, struck and held."""
    import torch

    from improviser.model.network import NumpyLSTM, frame_features, frame_targets

    cfg, net, rng = model.cfg, NumpyLSTM(model), np.random.default_rng(0)
    steps = 6
    onset = np.zeros((steps, 128), bool)
    for t in range(steps):
        onset[t, rng.choice(np.arange(48, 76), 4, replace=False)] = True
    player = np.zeros((steps, 128), bool)
    player[:, 72] = True
    memory = np.tile(np.r_[np.full(12, 1 / 12), 1.0].astype(np.float32), (steps, 1))
    x = frame_features(onset, onset, np.arange(steps), cfg, player, player, memory, memory)
    for t in range(steps):
        h = net.step(x[t])
    start = net.step_logits(h, player[-1, cfg.low: cfg.low + cfg.n_pitches])
    frames = []
    for k in (0, 1, 3, 3, 4, 5):
        struck = np.zeros(128, bool)
        pitches = rng.choice(np.arange(40, 80), k, replace=False)
        struck[pitches] = True
        held = np.zeros(128, bool)
        held[pitches[:1]] = True
        frames.append(frame_targets((struck & ~held)[None], struck[None], cfg)[0])
    frames = np.array(frames)
    ours = net.frame_log_probs(start, frames)
    with torch.no_grad():
        xt = torch.from_numpy(x)[None]
        out, _ = model.lstm(xt)
        n = len(frames)
        theirs = model.head_log_prob(out[:, -1:].repeat(1, n, 1), xt[:, -1:].repeat(1, n, 1),
                                     torch.from_numpy(frames)[None]).numpy()[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert len(set(np.round(ours, 3))) == n  # different frames, different probabilities


def test_the_log_p_of_chords_is_that_of_their_frames(model):
    """chord_log_probs (the accompanist's quick way) gives frame_log_probs' numbers for chords of three notes."""
    from improviser.model.network import HOLD, ONSET, NumpyLSTM

    net, rng = NumpyLSTM(model), np.random.default_rng(1)
    x = np.zeros(model.cfg.n_inputs, np.float32)
    x[3] = 1.0
    start = net.step_logits(net.step(x))
    pitches = np.sort(np.array([rng.choice(np.arange(5, 50), 3, replace=False) for _ in range(12)]), axis=1)
    held = rng.random(pitches.shape) < 0.3
    states = np.zeros((12, model.cfg.n_pitches), np.int64)
    np.put_along_axis(states, pitches, np.where(held, HOLD, ONSET), axis=1)
    np.testing.assert_allclose(net.chord_log_probs(start, pitches, held), net.frame_log_probs(start, states),
                               atol=1e-9)
