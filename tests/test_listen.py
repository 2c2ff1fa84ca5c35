"""Listening without a MIDI system: the input queue under a flood, heard notes on the step grid, respond
mode and panic on a virtual clock, the CC map, the MIDI clock follower, and the CLI's answers to bad options.
End to end on JACK: test_listen_jack.py."""

from __future__ import annotations

import random

import mido
import numpy as np
import pytest
from typer.testing import CliRunner

from improviser.cli import app
from improviser.errors import ImproviserError
from improviser.live.clock import VirtualClock
from improviser.live.engine import LiveEngine
from improviser.live.listen import DEFAULT_CC, HeardNotes, InputListener, Listening, parse_cc_map
from improviser.live.sync import ClockFollower
from improviser.model.generator import StreamingGenerator


def test_cc_map_defaults_overrides_and_one_clear_error_for_a_bad_spec():
    assert parse_cc_map(None) == DEFAULT_CC
    assert parse_cc_map(["temperature=21", "PANIC=22"])["temperature"] == 21
    for bad in ["temperature", "speed=3", "tempo=200", "tempo=x", "tempo=74"]:  # 74 is temperature's already
        with pytest.raises(ImproviserError, match="--cc"):
            parse_cc_map([bad])


def test_the_input_callback_sorts_counts_and_never_blocks_under_a_flood():
    clock_msgs = []
    listener = InputListener(on_clock=lambda kind, msg, t: clock_msgs.append(kind), panic_cc=119, maxsize=100)
    rng = random.Random(0)
    for _ in range(1000):
        listener.on_message(rng.choice([mido.Message("note_on", note=rng.randrange(128), velocity=64),
                                        mido.Message("sysex", data=[1, 2, 3]),
                                        mido.Message("pitchwheel", pitch=100),
                                        mido.Message("clock")]))
    listener.on_message(mido.Message("control_change", control=119, value=127))
    c = listener.counts
    assert c.notes + c.overflow + c.controls + c.ignored + c.clock == 1001
    assert c.notes == 100 and c.overflow > 0 and c.ignored > 0 and len(clock_msgs) == c.clock > 0
    assert listener.panics == 1  # counted at once, even with the queue full
    assert len(listener.drain()) == 100


def test_heard_notes_are_onsets_in_their_step_and_sound_on_while_held():
    heard = HeardNotes()
    heard.feed(mido.Message("note_on", note=60, velocity=80))
    heard.feed(mido.Message("note_on", note=64, velocity=80))
    heard.feed(mido.Message("note_off", note=64))  # struck and released within the step: still heard
    f = heard.frame()
    assert f.onset[[60, 64]].all() and f.sound[[60, 64]].all()
    f = heard.frame()
    assert f.pitches == [60] and not f.onset.any()  # held on, not struck again
    heard.feed(mido.Message("note_on", note=60, velocity=0))  # velocity 0 is a note-off
    assert not heard.frame().sound.any()


class ScriptedListener(InputListener):
    """Hands the producer scripted messages: ``script[k]`` is drained by step k."""

    def __init__(self, script: dict[int, list[mido.Message]]):
        super().__init__(panic_cc=DEFAULT_CC["panic"])
        self.script, self.k = script, 0

    def drain(self, until=None):
        msgs = self.script.get(self.k, [])
        self.k += 1
        return [(0.0, m) for m in msgs]


def phrase_script(start: int, pitches: list[int]) -> dict[int, list[mido.Message]]:
    script: dict[int, list] = {}
    for i, p in enumerate(pitches):
        script.setdefault(start + 2 * i, []).append(mido.Message("note_on", note=p, velocity=90))
        script.setdefault(start + 2 * i + 1, []).append(mido.Message("note_off", note=p))
    return script


def played_steps(model, listener, mode="respond", steps=80, **kw) -> list[int]:
    """Steps (at 150 bpm, on a virtual clock) at which the improviser struck a note."""
    engine = LiveEngine(StreamingGenerator(model, 0.9, 1, seed=0), 150, None, clock=VirtualClock(),
                        listening=Listening(listener, mode=mode, **kw))
    result = engine.run(steps * 0.1)
    return sorted({round(n.start / 0.1) for n in result.sessions[-1].notes()})


def test_respond_mode_waits_for_the_player_then_answers_after_the_pause(model):
    listener = ScriptedListener(phrase_script(4, [60, 62, 64, 65, 67, 65, 64, 62, 60]))
    steps = played_steps(model, listener, respond_after=2)
    # Silent before and during the phrase (steps 4..21), answering 2 beats (8 steps) after its last note.
    assert steps and min(steps) >= 21 + 8
    assert min(steps) <= 21 + 8 + 16


def test_accompany_mode_plays_from_the_start(model):
    steps = played_steps(model, ScriptedListener(phrase_script(4, [60, 62])), mode="accompany")
    assert steps and min(steps) < 4


def test_a_panic_resets_and_respond_mode_waits_for_the_player_again(model):
    script = phrase_script(2, [60, 64, 67])
    script[40] = [mido.Message("control_change", control=DEFAULT_CC["panic"], value=127)]
    steps = played_steps(model, ScriptedListener(script))
    assert steps and all(s < 41 for s in steps)  # answered, then nothing after the panic


def test_controls_set_temperature_stability_and_tempo(model):
    script = {1: [mido.Message("control_change", control=74, value=0),
                  mido.Message("control_change", control=71, value=127),
                  mido.Message("control_change", control=76, value=127)]}
    gen = StreamingGenerator(model, 0.9, 1, seed=0)
    listening = Listening(ScriptedListener(script), mode="accompany")
    engine = LiveEngine(gen, 100, None, clock=VirtualClock(), listening=listening)
    engine.run(1.0)
    assert gen.temperature == 0 and gen.note_stability == 16
    assert engine.timing.step_seconds == pytest.approx(60 / 240 / 4)
    assert [c[1] for c in listening.controls_applied] == ["temperature", "stability", "tempo"]


def feed_ticks(f: ClockFollower, times) -> None:
    for t in times:
        f.handle("clock", None, t)


def test_the_clock_follower_counts_ticks_through_jitter_and_a_lost_tick():
    f = ClockFollower()
    period = 60 / 120 / 24
    rng = np.random.default_rng(0)
    f.handle("start", None, 0.0)
    times = [1.0 + i * period + rng.uniform(-0.0005, 0.0005) for i in range(48)]
    del times[30]  # one tick lost on the way
    feed_ticks(f, times)
    assert f.position == 48 and f.lost == 1  # the grid did not slip
    assert f.bpm() == pytest.approx(120, rel=0.02)
    assert f.time_of(48) == pytest.approx(1.0 + 48 * period, abs=0.001)  # predicted, sub-tick


def test_the_clock_follower_follows_a_tempo_change_within_a_beat_and_stop_continue_songpos():
    f = ClockFollower()
    f.handle("start", None, 0.0)
    p1, p2 = 60 / 100 / 24, 60 / 140 / 24
    feed_ticks(f, [i * p1 for i in range(48)])
    t = 48 * p1
    feed_ticks(f, [t + i * p2 for i in range(24)])
    assert f.bpm() == pytest.approx(140, rel=0.01)
    f.handle("stop", None, t + 1)
    assert not f.running
    f.handle("songpos", mido.Message("songpos", pos=8), t + 1.1)
    f.handle("continue", None, t + 1.2)
    assert f.running and f.position == 48  # 8 sixteenths
    f.handle("clock", None, t + 1.21)
    assert f.position == 49


def test_cli_listening_options_need_an_input_and_valid_values(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "x.mid")
    for args, text in [(["--mode", "accompany"], "--input"), (["--sync", "clock"], "--input"),
                       (["--sync", "dance"], "--sync"), (["--cc", "tempo=74"], "--input")]:
        r = runner.invoke(app, ["record", out, "--seconds", "1", *args])
        assert r.exit_code == 1 and text in r.output and "Traceback" not in r.output, r.output


def test_a_tick_delivered_late_does_not_shift_the_grid():
    f = ClockFollower()
    period = 60 / 120 / 24
    f.handle("start", None, 0.0)
    times = [1.0 + i * period for i in range(40)]
    times[20] = times[21] - 0.0002  # delayed on the way, arriving just before the next one
    feed_ticks(f, times)
    assert f.position == 40 and f.lost == 0
    assert f.time_of(42) == pytest.approx(1.0 + 42 * period, abs=0.0005)


def test_ticks_delivered_together_after_a_stall_are_counted_once_each():
    f = ClockFollower()
    period = 60 / 120 / 24
    f.handle("start", None, 0.0)
    times = [1.0 + i * period for i in range(40)]
    times[20:23] = [times[23] - 0.0003] * 3  # a stall: three ticks arrive together just before the fourth
    feed_ticks(f, times)
    assert f.position == 40 and f.lost == 0
