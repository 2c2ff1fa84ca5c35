"""The live engine without a MIDI system: recorder, frame -> messages, stuck-note safety, sessions,
and the CLI's answers when there is no MIDI system at all. JACK end-to-end tests: test_live_jack.py."""

from __future__ import annotations

import os
import signal

import mido
import numpy as np
import pytest
from typer.testing import CliRunner

from improviser.cli import app
from improviser.live.clock import VirtualClock
from improviser.live.engine import LiveEngine, frame_messages, play, record
from improviser.live.recorder import SessionRecorder
from improviser.model.generator import StreamingGenerator
from improviser.music.encoding import Frame
from improviser.ports import midi as ports
from improviser.ports.midi import OutputPort, PortError, find_port


class MemoryPort:
    """An in-memory mido-like output port: keeps what was sent; can be told to fail."""

    def __init__(self, fail_after: int | None = None):
        self.name, self.sent, self.closed, self.fail_after = "memory", [], False, fail_after

    def send(self, msg):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            self.fail_after = None  # fail once, then let the stop path through
            raise OSError("the synth went away")
        self.sent.append(msg)

    def close(self):
        self.closed = True


def hanging(messages) -> set:
    """(channel, note) of note-ons never followed by a note-off."""
    on = set()
    for m in messages:
        if m.type == "note_on" and m.velocity > 0:
            on.add((m.channel, m.note))
        elif m.type in ("note_on", "note_off"):
            on.discard((m.channel, m.note))
    return on


# ---- frame -> messages ---------------------------------------------------------------------------

def test_frame_messages_end_notes_before_striking_and_restrike_held_pitches():
    sounding = np.zeros(128, bool)
    sounding[[60, 64, 67]] = True
    # 60 goes on sounding, 64 is struck again, 67 stops, 72 is struck.
    frame = Frame.of(onset=[64, 72], held=[60])
    msgs = frame_messages(sounding, frame)
    assert [(m.type, m.note) for m in msgs] == [("note_off", 64), ("note_off", 67), ("note_on", 64), ("note_on", 72)]


def test_frame_messages_strike_a_held_note_that_does_not_sound():
    # After a skipped step the frame may hold a pitch whose onset never went out: it is struck now.
    msgs = frame_messages(np.zeros(128, bool), Frame.of(held=[62]))
    assert [(m.type, m.note) for m in msgs] == [("note_on", 62)]


# ---- recorder ------------------------------------------------------------------------------------

def test_recorder_closes_held_notes_at_a_split_and_strikes_them_again():
    rec = SessionRecorder(start=10.0)
    rec.record(mido.Message("note_on", note=60, velocity=90), 10.5)
    rec.record(mido.Message("note_on", note=64, velocity=70), 11.0)
    rec.record(mido.Message("note_off", note=64), 11.5)
    rec.record(mido.Message("control_change", control=123), 11.6)  # not a note: ignored
    first = rec.split(12.0)
    rec.record(mido.Message("note_off", note=60), 12.25)
    second = rec.finish(13.0)
    assert first.length == 2.0 and second.length == 1.0
    assert [(n.pitch, n.start, n.end, n.velocity) for n in first.notes()] == [(60, 0.5, 2.0, 90), (64, 1.0, 1.5, 70)]
    assert [(n.pitch, n.start, n.end, n.velocity) for n in second.notes()] == [(60, 0.0, 0.25, 90)]
    assert second.notes("player") == []


def test_recorder_keeps_player_notes_on_their_own_track(tmp_path):
    rec = SessionRecorder(start=0.0)
    rec.record(mido.Message("note_on", note=50, velocity=60), 0.1, track="player")
    rec.record(mido.Message("note_on", note=70, velocity=60), 0.2)
    session = rec.finish(1.0)
    assert [n.pitch for n in session.notes("player")] == [50]
    assert [n.pitch for n in session.notes()] == [70]
    path = session.write(tmp_path / "s.mid", bpm=120)
    names = [tr.name for tr in mido.MidiFile(path).tracks]
    assert names[1:] == ["improviser", "player"]


# ---- ports ---------------------------------------------------------------------------------------

def test_silence_turns_off_exactly_the_sounding_notes_then_cc123_on_used_channels():
    mem = MemoryPort()
    port = OutputPort(mem, settle=0)
    port.send(mido.Message("note_on", channel=0, note=60, velocity=80))
    port.send(mido.Message("note_on", channel=2, note=40, velocity=80))
    port.send(mido.Message("note_on", channel=0, note=62, velocity=80))
    port.send(mido.Message("note_on", channel=0, note=62, velocity=0))  # a note-off in disguise
    port.close()
    tail = mem.sent[4:]
    assert sorted((m.channel, m.note) for m in tail if m.type == "note_off") == [(0, 60), (2, 40)]
    assert [(m.channel, m.control) for m in tail if m.type == "control_change"] == [(0, 123), (2, 123)]
    assert tail[-1].type == "control_change" and not hanging(mem.sent) and mem.closed
    port.close()  # twice is harmless
    assert len(mem.sent) == 8  # 4 sent, 2 note-offs, 2 CC 123; nothing more


def test_find_port_matches_part_of_a_name_and_lists_the_ports_otherwise():
    names = ["Midi Through:Midi Through Port-0 14:0", "FLUID Synth (123):Synth input port (123:0) 128:0"]
    assert find_port(names, "fluid") == names[1]
    with pytest.raises(PortError, match="Midi Through.*FLUID Synth"):
        find_port(names, "surge")
    with pytest.raises(PortError, match="several"):
        find_port(names + ["FLUID Synth (456):Synth input port"], "FLUID")


def test_an_unknown_api_is_refused_with_the_choices():
    with pytest.raises(PortError, match="alsa, jack, coremidi, winmm"):
        ports.backend("pulse")


# ---- the engine on a virtual clock ---------------------------------------------------------------

def test_engine_sends_exactly_what_it_records_and_leaves_nothing_hanging(model):
    mem = MemoryPort()
    engine = LiveEngine(StreamingGenerator(model, 1.0, 1, seed=4), bpm=120, port=OutputPort(mem, settle=0),
                        clock=VirtualClock())
    result = engine.run(10.0)
    session = result.sessions[-1]
    assert session.length == pytest.approx(10.0, abs=1e-3) and not result.interrupted
    ons = [m.note for m in mem.sent if m.type == "note_on" and m.velocity > 0]
    assert ons and ons == [n.pitch for n in session.notes()]
    assert not hanging(mem.sent)
    assert result.stats.played == 80 and result.stats.late_steps == 0  # 10 s of 16ths at 120 bpm


def test_sessions_follow_each_other_without_losing_notes(model):
    gen_a = StreamingGenerator(model, 1.0, 2, seed=8)
    mem = MemoryPort()
    written = []
    engine = LiveEngine(gen_a, bpm=120, port=OutputPort(mem, settle=0), clock=VirtualClock(),
                        session_seconds=2.0, on_session=written.append)
    result = engine.run(7.0)
    assert [s.length for s in result.sessions] == pytest.approx([2.0, 2.0, 2.0, 1.0], abs=1e-4)
    assert len(written) == 3
    # The same music in one piece: every note-on sent is in a session (re-strikes at a seam aside).
    ons = [m.note for m in mem.sent if m.type == "note_on" and m.velocity > 0]
    in_files = []
    for i, s in enumerate(result.sessions):
        prev_held = {n.pitch for n in result.sessions[i - 1].notes() if i and n.end == pytest.approx(2.0)}
        in_files += [n.pitch for n in s.notes() if not (n.start == 0 and n.pitch in prev_held)]
    assert sorted(in_files) == sorted(ons)


def test_an_exception_mid_run_still_turns_every_note_off(model):
    mem = MemoryPort(fail_after=40)
    engine = LiveEngine(StreamingGenerator(model, 1.0, 4, seed=1), bpm=120, port=OutputPort(mem, settle=0),
                        clock=VirtualClock())
    with pytest.raises(OSError, match="went away"):
        engine.run(30.0)
    assert any(m.type == "control_change" and m.control == 123 for m in mem.sent)
    assert not hanging(mem.sent)


def test_record_without_a_port_writes_the_file_at_once(model, tmp_path):
    out = tmp_path / "offline.mid"
    result = record(StreamingGenerator(model, 0.9, 1, seed=2), out, 30.0, 100)  # virtual clock: not 30 s
    mid = mido.MidiFile(out)
    assert mid.length == pytest.approx(30.0, abs=0.01)
    assert result.n_notes > 10


def test_play_writes_each_session_and_the_partial_last_one_on_sigterm(model, tmp_path):
    mem = MemoryPort()
    clock = VirtualClock()
    port = OutputPort(mem, settle=0)
    original = port.send

    def send(msg):  # SIGTERM to ourselves 5.5 s into the music, as a service manager would send it
        original(msg)
        if clock.now() > 5.5 and not hasattr(send, "done"):
            send.done = True
            os.kill(os.getpid(), signal.SIGTERM)

    port.send = send
    result = play(StreamingGenerator(model, 1.0, 1, seed=3), tmp_path / "sessions", 2.0, 120, port, clock=clock)
    files = sorted((tmp_path / "sessions").glob("session-*.mid"))
    assert files == result.paths and len(files) == 3
    lengths = [mido.MidiFile(f).length for f in files]
    assert lengths[:2] == pytest.approx([2.0, 2.0], abs=0.01) and 1.4 < lengths[2] < 1.7
    assert not hanging(mem.sent)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


# ---- the CLI where there is no MIDI system -------------------------------------------------------

@pytest.fixture
def no_alsa(monkeypatch):
    real_exists = ports.os.path.exists
    monkeypatch.setattr(ports.sys, "platform", "linux")
    monkeypatch.setattr(ports.os.path, "exists", lambda p: False if p == "/dev/snd/seq" else real_exists(p))


def test_record_without_midi_warns_in_one_line_and_still_writes(no_alsa, tmp_path):
    out = tmp_path / "take.mid"
    res = CliRunner().invoke(app, ["record", str(out), "--seconds", "4", "--api", "alsa", "--seed", "1"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "snd-seq" in warnings[0]
    assert mido.MidiFile(out).length == pytest.approx(4.0, abs=0.01)


def test_play_without_midi_says_what_is_missing(no_alsa, tmp_path):
    res = CliRunner().invoke(app, ["play", "--sessions", str(tmp_path / "s"), "--api", "alsa"])
    assert res.exit_code == 1
    assert "snd-seq" in res.output and "jack" in res.output and "Traceback" not in res.output
    assert not list((tmp_path / "s").glob("*.mid"))
