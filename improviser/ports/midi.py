"""MIDI ports: a thin wrapper over mido's python-rtmidi backend, with stuck-note safety.

- ``--api alsa|jack|coremidi|winmm`` picks the rtmidi API per call (a ``mido.Backend``
  object), not through a process-wide environment variable.
- ``open_output(api)`` opens a virtual output port whose name contains
  ``improviser``; ``open_output(api, "NAME")`` connects to the existing port whose
  name contains NAME, or raises ``PortError`` listing the ports that exist.
- A missing MIDI system (no ALSA sequencer, no JACK server, ...) raises
  ``MidiSystemMissing``, a ``PortError`` that says what to install or start.
- ``OutputPort`` remembers which notes sound on which channel. ``silence()``
  (also run by ``close()``) sends a note-off for each of them, then CC 123
  (all notes off) on every channel used, then waits a few milliseconds so the
  port has delivered them before anything is closed.
- On JACK the default backend is ``jack_midi`` (``jack_backend="jack"``): it writes each
  message on the frame of the time it is given (``send(msg, at=t)``, handed over ``lead``
  seconds ahead) and stamps input with the time of its frame. ``jack_backend="rtmidi"``
  keeps python-rtmidi's JACK backend, which writes everything at the start of a period.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from dataclasses import dataclass

import mido

from ..errors import PortError, quiet_stderr

CLIENT_NAME = "improviser"  # every port this program opens has this in its name
PORT_NAME = "out"
SETTLE_SECONDS = 0.02  # after the last message, before closing: a few JACK/ALSA periods
BURST = 16  # send stop-path note-offs in slices this big: JACK drops messages from large bursts

# Our API names -> python-rtmidi's.
APIS = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "winmm": "WINDOWS_MM"}

HOW_TO_GET_MIDI = {
    "alsa": "the ALSA sequencer is not there (/dev/snd/seq is missing): load it with `sudo modprobe snd-seq` "
            "(a container needs --device /dev/snd/seq), or start a JACK server and use --api jack",
    "jack": "no JACK server is running: start one (e.g. `jackd -d alsa`, qjackctl, or PipeWire's JACK layer), "
            "or use --api alsa",
    "coremidi": "CoreMIDI did not answer; open Audio MIDI Setup and enable the IAC Driver",
    "winmm": "Windows MIDI cannot make virtual ports: install loopMIDI, create a port in it, "
             "and pass --output with its name",
}


class MidiSystemMissing(PortError):
    """There is no MIDI system to open ports on at all (as opposed to a wrong port name)."""


JACK_BACKENDS = ("jack", "rtmidi")  # with --api jack: our frame-placing backend (the default), or rtmidi's


def jack_backend_of(api: str | None, jack_backend: str | None) -> str | None:
    """The JACK backend ports on ``api`` use: None off JACK, else ``jack_backend``; by default "jack", or
    "rtmidi" where the JACK-Client package is not installed (the CLI says so).

    PortError for an unknown name, or for a backend named with another API.
    """
    if jack_backend is not None and jack_backend not in JACK_BACKENDS:
        raise PortError(f"unknown --jack-backend {jack_backend!r}; choose jack (each message on its frame, the "
                        "default) or rtmidi (python-rtmidi's: everything at the start of a period)")
    if (api or default_api()).lower() != "jack":
        if jack_backend is not None:
            raise PortError(f"--jack-backend {jack_backend} is for --api jack (the MIDI system here is "
                            f"{(api or default_api()).lower()})")
        return None
    if jack_backend is None:
        return "jack" if importlib.util.find_spec("jack") is not None else "rtmidi"
    return jack_backend


def default_api() -> str:
    """The platform's usual API: CoreMIDI on macOS, WinMM on Windows, ALSA elsewhere."""
    if sys.platform == "darwin":
        return "coremidi"
    if sys.platform.startswith("win"):
        return "winmm"
    return "alsa"


def backend(api: str | None = None) -> mido.Backend:
    """The mido rtmidi backend for ``api``; raises PortError for an unknown API, MidiSystemMissing if absent."""
    api = (api or default_api()).lower()
    if api not in APIS:
        raise PortError(f"unknown MIDI API {api!r}; choose one of {', '.join(APIS)}")
    try:
        import rtmidi
    except ImportError:
        raise MidiSystemMissing("python-rtmidi is not installed: pip install python-rtmidi") from None
    compiled = {rtmidi.get_api_name(a) for a in rtmidi.get_compiled_api()}
    if api not in compiled:
        raise MidiSystemMissing(f"this python-rtmidi was built without {api} "
                                f"(it has: {', '.join(sorted(compiled)) or 'none'})")
    if api == "alsa" and sys.platform.startswith("linux") and not os.path.exists("/dev/snd/seq"):
        raise MidiSystemMissing(f"no MIDI system: {HOW_TO_GET_MIDI['alsa']}")
    be = mido.Backend(f"mido.backends.rtmidi/{APIS[api]}", load=True)
    try:
        with quiet_stderr():  # libjack and alsa-lib print several lines of their own on failure
            be.get_output_names()
    except Exception as e:  # rtmidi raises its own SystemError types
        raise MidiSystemMissing(f"no MIDI system: {HOW_TO_GET_MIDI.get(api, str(e))}") from None
    return be


@dataclass(frozen=True)
class PortList:
    """Port names of one API. outputs: ports we can play into; inputs: ports we can listen to."""

    api: str
    outputs: list[str]
    inputs: list[str]


def list_ports(api: str | None = None) -> PortList:
    be = backend(api)
    with quiet_stderr():
        return PortList((api or default_api()).lower(), be.get_output_names(), be.get_input_names())


def find_port(names: list[str], wanted: str, kind: str = "output") -> str:
    """The one name that equals ``wanted`` or contains it (case-insensitive); PortError otherwise."""
    if wanted in names:
        return wanted
    matches = [n for n in names if wanted.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    existing = ", ".join(repr(n) for n in names) if names else "none"
    if not matches:
        raise PortError(f"no MIDI {kind} port matches {wanted!r}; the {kind} ports are: {existing}")
    raise PortError(f"{wanted!r} matches several MIDI {kind} ports ({', '.join(map(repr, matches))}); "
                    "give more of the name")


class OutputPort:
    """An open MIDI output that remembers the notes it left sounding and can silence them.

    port: any mido output port (or an object with ``send`` and ``close``). A port that places messages
    in time itself (``jack_midi.JackOutput``) also has ``send(msg, at=t)``, a ``lead`` (how long before
    ``t`` to hand a message over) and a ``hop`` (the soonest constant delay after an input's time at
    which an answer can go out); for any other port both are 0 and messages go out when sent.
    """

    def __init__(self, port, name: str | None = None, settle: float = SETTLE_SECONDS):
        self._port = port  # swapped only under _lock (see reconnect.ReconnectingOutput)
        self.name = name or getattr(port, "name", "?")
        self.settle = settle
        self.lead = float(getattr(port, "lead", 0.0))
        self.hop = float(getattr(port, "hop", 0.0))
        self.period = float(getattr(port, "period", 0.0))  # the port's own period (JACK's), if it has one
        # The port is another process's, which forwards the player's notes (--thru) itself (``remote``).
        self.forwards_thru = bool(getattr(port, "forwards_thru", False))
        # The sender, the stop path and a reconnect watcher may all reach the port: every send and a
        # swap of the underlying port hold this lock, so a swap never meets a send half way.
        self._lock = threading.RLock()
        self._sounding: dict[int, set[int]] = {}  # channel -> pitches with a note-on not yet turned off
        self._channels: set[int] = set()  # every channel a note went out on
        self._dirty = False  # something was sent since the last silence()
        self.closed = False

    def send(self, msg: mido.Message, at: float | None = None) -> None:
        """Send one message, keeping track of sounding notes. ``at``: when it is due (monotonic seconds), for
        a port with a ``lead``; other ports send it now."""
        with self._lock:
            self._send(msg, at)
            self._track(msg)

    def _send(self, msg: mido.Message, at: float | None = None) -> None:
        """Hand one message to the underlying port (lock held); a subclass changes only this."""
        if at is None or not self.lead:
            self._port.send(msg)
        else:
            self._port.send(msg, at=at)

    @property
    def late(self) -> int:
        """Messages the port wrote after their time (a port that places messages in time; else 0)."""
        return int(getattr(self._port, "late", 0))

    @property
    def xruns(self) -> int | None:
        """The cycles JACK reported late while this port was open (None: a port that does not count them)."""
        n = getattr(self._port, "xruns", None)
        return None if n is None else int(n)

    def beat(self, due: float) -> None:
        """The next step is due by ``due``: a port in another process silences a worker that misses it."""
        beat = getattr(self._port, "beat", None)
        if beat is not None:
            beat(due)

    def journal(self, spec: dict) -> None:
        """The session now playing (``live.split``): a port in another process writes it if the worker dies."""
        journal = getattr(self._port, "journal", None)
        if journal is not None:
            journal(spec)

    def _track(self, msg: mido.Message) -> None:
        self._dirty = True
        if msg.type == "note_on" and msg.velocity > 0:
            self._sounding.setdefault(msg.channel, set()).add(msg.note)
            self._channels.add(msg.channel)
        elif msg.type in ("note_off", "note_on"):  # note_on with velocity 0 is a note-off
            self._sounding.get(msg.channel, set()).discard(msg.note)

    def sounding(self) -> list[tuple[int, int]]:
        """(channel, pitch) of every note that sounds now."""
        return sorted((ch, p) for ch, pitches in self._sounding.items() for p in pitches)

    def note_offs(self) -> list[mido.Message]:
        """A note-off for every sounding note (what ``silence`` will send)."""
        return [mido.Message("note_off", channel=ch, note=p, velocity=0) for ch, p in self.sounding()]

    def silence(self) -> list[mido.Message]:
        """Note-off for each sounding note, CC 123 on each used channel, then wait so they are delivered.

        Returns the note-offs sent. Safe to call more than once: a second call with
        nothing sent in between sends nothing.
        """
        if not self._dirty:
            return []
        offs = self.note_offs()
        for i, msg in enumerate(offs):
            if i and i % BURST == 0:
                time.sleep(0.002)  # let the port drain between slices
            self.send(msg)
        for ch in sorted(self._channels):
            with self._lock:
                self._send(mido.Message("control_change", channel=ch, control=123, value=0))
        self._dirty = False
        time.sleep(self.settle)
        return offs

    def close(self) -> None:
        """Silence, then close the port. Safe to call more than once."""
        if self.closed:
            return
        try:
            self.silence()
        finally:
            self.closed = True
            self._port.close()

    def __enter__(self) -> OutputPort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_output(api: str | None = None, name: str | None = None, jack_backend: str | None = None) -> OutputPort:
    """A virtual output port named with ``improviser`` (name None), or the existing port matching ``name``.

    jack_backend: with api "jack", "jack" (the default: each message on its frame) or "rtmidi".
    """
    from . import remote

    if remote.link() is not None:  # this is the worker: the real-time process holds the port
        port = remote.RemoteOutput(remote.link())
        return OutputPort(port, port.target or port.name)
    if jack_backend_of(api, jack_backend) == "jack":
        from . import jack_midi

        port = jack_midi.open_output(name)
        return OutputPort(port, port.target or port.name)
    api = (api or default_api()).lower()
    be = backend(api)
    try:
        with quiet_stderr():
            if name is None:
                if api == "winmm":
                    raise MidiSystemMissing(HOW_TO_GET_MIDI["winmm"])
                port = be.open_output(PORT_NAME, client_name=CLIENT_NAME)
                return OutputPort(port, f"{CLIENT_NAME}:{PORT_NAME}")
            full = find_port(be.get_output_names(), name, "output")
            return OutputPort(be.open_output(full), full)
    except PortError:
        raise
    except Exception as e:  # rtmidi errors: the port vanished, the system refused, ...
        raise PortError(f"cannot open MIDI output on {api}: {e}") from None


IN_PORT_NAME = "in"


def open_input(callback, api: str | None = None, name: str | None = None, jack_backend: str | None = None):
    """Listen on a virtual input port named with ``improviser`` (name None or "virtual") or on the existing
    input port matching ``name``. ``callback(msg)`` runs on the MIDI system's thread for every message; the
    JACK backend (``jack_backend`` as for ``open_output``) calls ``callback(msg, t)`` instead, ``t`` the
    monotonic time of the message's frame.

    Returns the open port (close it to stop listening).
    """
    from . import remote

    if remote.link() is not None:  # this is the worker: the real-time process holds the port
        return remote.RemoteInput(remote.link(), callback)
    if jack_backend_of(api, jack_backend) == "jack":
        from . import jack_midi

        return jack_midi.open_input(callback, name)
    api = (api or default_api()).lower()
    be = backend(api)
    try:
        with quiet_stderr():
            if name is None or name == "virtual":
                if api == "winmm":
                    raise MidiSystemMissing(HOW_TO_GET_MIDI["winmm"].replace("--output", "--input"))
                return be.open_input(IN_PORT_NAME, client_name=CLIENT_NAME, callback=callback)
            full = find_port(be.get_input_names(), name, "input")
            return be.open_input(full, callback=callback)
    except PortError:
        raise
    except Exception as e:  # rtmidi errors: the port vanished, the system refused, ...
        raise PortError(f"cannot open MIDI input on {api}: {e}") from None


