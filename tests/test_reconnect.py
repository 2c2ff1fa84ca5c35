"""Reconnecting ``--output NAME`` without a MIDI system: in-memory ports and a port list the test controls.

End to end on JACK (a monitor client that quits and is started again): test_faults.py.
"""

from __future__ import annotations

import time

import mido

from improviser.ports.midi import OutputPort, find_port
from improviser.ports.reconnect import ReconnectingOutput


class MemoryPort:
    def __init__(self, name: str, fail: bool = False):
        self.name, self.sent, self.closed, self.fail = name, [], False, fail

    def send(self, msg):
        if self.fail:
            raise OSError("the synth went away")
        self.sent.append(msg)

    def close(self):
        self.closed = True


class World:
    """The output ports that exist, and every connection opened to them."""

    def __init__(self, *names: str):
        self.names = list(names)
        self.opened: list[MemoryPort] = []

    def reopen(self, api, wanted):
        port = MemoryPort(find_port(self.names, wanted))  # PortError when it is not there
        self.opened.append(port)
        return OutputPort(port, port.name)

    def output(self, lines: list[str]) -> ReconnectingOutput:
        first = self.reopen(None, "synth")
        # poll=3600: the test calls check() itself instead of the watcher thread
        return ReconnectingOutput(first, None, "synth", warn=lines.append, info=lines.append, poll=3600,
                                  reopen=self.reopen, list_names=lambda api: list(self.names))


def note(pitch: int) -> mido.Message:
    return mido.Message("note_on", note=pitch, velocity=80)


def test_a_vanished_port_is_noticed_once_and_reconnected_when_back():
    world, lines = World("synth:in", "other:in"), []
    out = world.output(lines)
    out.send(note(60))
    out.check()
    assert lines == []
    world.names.remove("synth:in")  # the synth quits
    out.check()
    out.send(note(61))  # goes nowhere, but does not raise
    out.check()
    assert len(lines) == 1 and "lost MIDI output 'synth:in'" in lines[0] and not out.connected
    world.names.append("synth:in")  # and is started again
    out.check()
    out.send(note(62))
    assert len(lines) == 2 and lines[1] == "reconnected to MIDI output 'synth:in'" and out.connected
    assert [m.note for m in world.opened[0].sent] == [60, 61]
    assert [m.note for m in world.opened[1].sent] == [62]
    assert world.opened[0].closed  # the dead connection is closed
    out.close()
    # The stop path silences every note sounding, on the connection in use now.
    assert [(m.type, m.note) for m in world.opened[1].sent[1:] if m.type == "note_off"] == [
        ("note_off", 60), ("note_off", 61), ("note_off", 62)]


def test_a_failing_send_never_raises_and_leads_to_a_fresh_connection():
    world, lines = World("synth:in"), []
    out = world.output(lines)
    world.opened[0].fail = True
    out.send(note(60))  # a backend that reports the vanished peer
    out.check()
    assert "sending failed: the synth went away" in lines[0]
    assert "reconnected" in lines[1] and len(world.opened) == 2
    out.send(note(61))
    assert [m.note for m in world.opened[1].sent] == [61]
    out.close()


def test_another_port_matching_the_name_does_not_hide_the_loss():
    world, lines = World("synth:in"), []
    out = world.output(lines)
    world.names = ["synth:in-2", "synth:in-3"]  # ours is gone; two others match NAME, so none is chosen
    out.check()
    out.check()
    assert len(lines) == 1 and "lost" in lines[0]
    world.names = ["synth:in-2"]
    out.check()
    assert lines[1] == "reconnected to MIDI output 'synth:in-2'"
    out.close()


def test_the_watcher_thread_does_the_checking():
    world, lines = World("synth:in"), []
    first = world.reopen(None, "synth")
    out = ReconnectingOutput(first, None, "synth", warn=lines.append, info=lines.append, poll=0.01,
                             reopen=world.reopen, list_names=lambda api: list(world.names))
    world.names = []
    deadline = time.monotonic() + 10
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    out.close()
    assert lines and "lost" in lines[0]
