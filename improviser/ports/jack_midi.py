"""The JACK backend: each message written on its own frame, each input stamped with its own.

python-rtmidi's JACK backend writes whatever was sent during a period at frame 0 of the next one, so
a synth hears the music quantised to the period (measured at a separate client: onset jitter p99
2.5 ms at 256 frames, 10.5 ms at 1024, however exactly the sender kept its deadlines). Here:

- **Output** (``JackOutput``): the sender hands each message over ``lead`` seconds ahead, with the
  time (monotonic seconds) it is due: ``send(msg, at=t)``. JACK's process callback writes every
  message whose time falls in the period at its offset in that period; a message whose time has
  already passed goes out at offset 0 and is counted in ``late``. ``lead`` is one period plus
  ``MARGIN`` (time for the sender to wake up and hand over): a message is due at most one period
  after the start of the cycle that must write it, and that cycle's callback runs at its start.
  A message without a time goes out as soon as possible, but never before one handed over earlier
  (so the stop path's note-offs follow every note-on already queued).
- **Input** (``JackInput``): the process callback stamps each event with the time of its frame and
  hands the bytes to a thread of its own, which parses them and calls ``callback(msg, t)``.

Time: ``FrameClock`` maps the cycle's first frame to ``time.monotonic()``. In every cycle it reads
(monotonic, ``jack_frame_time``) back to back: JACK's frame time is its own smoothed estimate of
the current frame, so each pair is a point on the line frames = rate * (t - base); ``base`` is the
median of the last few readings (a reading whose two clock reads were far apart, the thread having
been preempted, is dropped; one far from the median starts the readings afresh). On a real-time
server the cycle's start found so is within a few frames of where JACK puts it (±0.01 ms measured),
however late the callback itself runs (it waits for Python's GIL: often a millisecond or more). A
server that is not real-time on a busy machine runs its cycles in fits (measured: from 10 ms before
to 40 ms after the time its own clock gives them), and there the music must follow the wall clock,
not the frames: the start is kept between ``LATE_CYCLE`` before the callback's own wake-up and that
wake-up, so a message is neither held for a cycle that has already gone by nor written early.
Frames are unsigned 32-bit and wrap after a day at 48 kHz: only differences of them are used.

Threads and shared state (one JACK client per port, as rtmidi does):
- ``JackOutput._inbox``: appended by the senders (under ``_lock``), emptied by the process callback
  (a ``collections.deque``: append and popleft are atomic); ``_pending`` (a heap) and the counters
  ``written``, ``late``, ``dropped``: the process callback only; ``handed``: the senders.
- ``JackInput._events``: the process callback puts a list per period, the delivery thread takes
  them (``queue.SimpleQueue``, which never blocks a put).
- ``FrameClock``: the process callback of its client only.

The process callbacks never raise (a callback that raises is taken out of the graph by JACK) and
wait on nothing but Python's GIL, which they must take in every period: that is this backend's weak
point at small periods. At 64 frames (1.3 ms) a model step holding the GIL longer than a period makes
JACK report an xrun and lose time, and the onsets move with its clock by the time lost (README).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable

import mido

from ..errors import PortError, quiet_stderr
from .midi import CLIENT_NAME, HOW_TO_GET_MIDI, IN_PORT_NAME, PORT_NAME, MidiSystemMissing, find_port

log = logging.getLogger(__name__)

MARGIN = 0.002  # s: for the sender to wake and hand over, beyond the period (a loaded 2-core machine)
HOP_MARGIN = 0.0001  # s: beyond the period, from an input's frame to the soonest frame it can answer on
READINGS = 16  # (monotonic, frame) readings the clock's base is the median of
JUMP_SECONDS = 0.0005  # a reading this far from the median: the frames jumped (an xrun): start afresh
LATE_CYCLE = 0.001  # s: a callback woken later than this after its cycle's start is taken to start later
PAIR_SECONDS = 50e-6  # a reading whose two monotonic reads are further apart than this is dropped
BEHIND_SECONDS = 0.1  # frames lost in xruns: the music keeps to the frames until it is this far behind ...
AHEAD_SECONDS = 0.001  # ... and follows frames that run ahead of it by more than this (JACK's estimate after an xrun)
SLEW = 0.002  # ... then catches up with the wall clock by 2 ms a second (a tempo 0.2 % fast, for a while)
MAX_DRAIN_SECONDS = 1.0  # on close: the longest wait for queued messages to be written
WRAP = 1 << 32  # JACK frame times are unsigned 32-bit


def _frames_between(later: int, earlier: int) -> int:
    """``later - earlier`` of two 32-bit frame times, across a wrap (negative if ``later`` is earlier)."""
    d = (later - earlier) % WRAP
    return d - WRAP if d >= WRAP // 2 else d


class FrameClock:
    """Monotonic seconds of a JACK client's frames. ``update()`` is called in every process callback."""

    def __init__(self, client):
        self.client = client
        self.rate = float(client.samplerate)
        self.follow_wall = not client.realtime  # a server that is not real-time does not keep time
        self.cycle_start = 0.0  # monotonic time of the current cycle's first frame (after update)
        self._frames = 0  # the current cycle's first frame, counted from the first cycle (no wrap)
        self._last: int | None = None  # the current cycle's first frame as JACK gives it
        self._bases: collections.deque = collections.deque(maxlen=READINGS)
        self.anchor: float | None = None  # monotonic time of frame 0 the music keeps to (see update)

    def update(self) -> float:
        """Read the clocks at the start of a cycle; returns the monotonic time of its first frame."""
        client = self.client
        first = client.last_frame_time
        if self._last is not None:
            self._frames += _frames_between(first, self._last)
        self._last = first
        before = time.monotonic()
        now = client.frame_time
        after = time.monotonic()
        if after - before < PAIR_SECONDS or not self._bases:
            into = _frames_between(now, first)  # how far into the cycle JACK's clock is now
            base = (before + after) / 2 - (self._frames + into) / self.rate
            if self._bases and abs(base - statistics.median(self._bases)) > JUMP_SECONDS:
                self._bases.clear()
            self._bases.append(base)
        base = statistics.median(self._bases)
        # The music keeps to the frames: JACK's clock is the audio's. When an xrun loses frames (the readings'
        # base moves later), the anchor stays, so what is due later is written later by as much, on its frame
        # of the same grid -- a synth in the graph hears no jump. Only when the frames have fallen more than
        # BEHIND_SECONDS behind the wall clock does the anchor catch up, by SLEW of the time that passes; frames
        # running more than AHEAD_SECONDS ahead of it are followed at once (a message is handed over MARGIN ahead:
        # it must never be due before that).
        if self.anchor is None or base < self.anchor - AHEAD_SECONDS:
            self.anchor = base if self.anchor is None else base + AHEAD_SECONDS
        elif base - self.anchor > BEHIND_SECONDS:
            self.anchor += min(base - self.anchor - BEHIND_SECONDS, SLEW * client.blocksize / self.rate)
        start = self.anchor + self._frames / self.rate
        if self.follow_wall:
            start = min(before, max(start, before - LATE_CYCLE))
        self.cycle_start = start
        return self.cycle_start


def _client(name: str):
    """A JACK client named ``name`` (or ``name-01``... if taken), on the server JACK_DEFAULT_SERVER names."""
    try:
        import jack
    except ImportError:
        raise MidiSystemMissing("the JACK backend needs the JACK-Client package: pip install 'improviser[jack]' "
                                "(or use --jack-backend rtmidi)") from None
    except OSError:  # JACK-Client is there, libjack is not
        raise MidiSystemMissing(f"no MIDI system: the JACK library is not installed; "
                                f"{HOW_TO_GET_MIDI['jack']}") from None
    try:
        with quiet_stderr():  # libjack prints a few lines of its own when there is no server
            return jack.Client(name, no_start_server=True)
    except jack.JackError:
        raise MidiSystemMissing(f"no MIDI system: {HOW_TO_GET_MIDI['jack']}") from None


class JackOutput:
    """A JACK MIDI output port that writes each message on the frame of its time.

    name: the client's name; port: the port's. ``lead``: how long before its time a message must be handed
    over; ``hop``: the soonest constant delay after an input's time at which an answer can go out (one
    period and a few frames); ``period``: JACK's period in seconds.
    """

    def __init__(self, name: str = CLIENT_NAME, port: str = PORT_NAME, margin: float = MARGIN):
        self.client = _client(name)
        try:
            self.port = self.client.midi_outports.register(port)
            self.name = self.port.name
            self.target: str | None = None  # the port it is connected to (open_output)
            self.clock = FrameClock(self.client)
            self.period = self.client.blocksize / self.clock.rate
            self.lead = self.period + margin
            self.hop = self.period + HOP_MARGIN
            self.handed = 0  # messages handed over (senders)
            self.written = self.late = self.dropped = 0  # the process callback's counts
            self.gone = False  # the server shut us down (JACK's thread sets it)
            self.closed = False
            self._lock = threading.Lock()  # senders: the order of hand-over and the time of the last one
            self._seq = itertools.count()  # ties on the same frame go out in the order handed over
            self._last_at = 0.0  # the latest time handed over (under _lock)
            self._inbox: collections.deque = collections.deque()
            self._pending: list = []  # heap of (time, seq, bytes, timed): the process callback's own
            self.client.set_process_callback(self._process)
            self.client.set_shutdown_callback(self._shutdown)
            self.client.activate()
        except Exception as e:  # JACK refused the port: do not leave the client open
            self.client.close()
            raise PortError(f"cannot open JACK MIDI output {name}:{port}: {e}") from None

    # ---- the senders ---------------------------------------------------------------------------------

    def send(self, msg: mido.Message, at: float | None = None) -> None:
        """Write ``msg`` at monotonic time ``at`` (hand it over ``lead`` before), or as soon as possible after
        everything handed over before it (``at`` None)."""
        data = bytes(msg.bytes())
        timed = at is not None
        with self._lock:
            if at is None:
                at = max(time.monotonic(), self._last_at)
            self._last_at = max(self._last_at, at)
            self._inbox.append((at, next(self._seq), data, timed))
            self.handed += 1

    def output_names(self) -> list[str]:
        """The MIDI ports this port could play into (JACK's MIDI inputs), seen through this client."""
        return [p.name for p in self.client.get_ports(is_midi=True, is_input=True)]

    def close(self) -> None:
        """Wait (up to MAX_DRAIN_SECONDS) until everything handed over is written and read, then close."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + MAX_DRAIN_SECONDS
        while not self.gone and self.written + self.dropped < self.handed and time.monotonic() < deadline:
            time.sleep(self.period / 4)
        if not self.gone:
            time.sleep(2 * self.period)  # the cycle that wrote the last ones has been read by the clients after us
        self.client.deactivate()
        self.client.close()

    # ---- JACK's thread -------------------------------------------------------------------------------

    def _process(self, frames: int) -> None:
        try:
            start = self.clock.update()
            port = self.port
            port.clear_buffer()
            pending, inbox = self._pending, self._inbox
            while inbox:
                heapq.heappush(pending, inbox.popleft())
            rate, offset = self.clock.rate, 0
            while pending:
                at, _, data, timed = pending[0]
                frame = round((at - start) * rate)
                if frame >= frames:
                    break  # due in a later period
                if frame < 0 and timed:
                    self.late += 1  # its period has passed: now, at the start of this one
                offset = max(offset, frame, 0)  # JACK takes a period's events in order of their frames
                try:
                    port.write_midi_event(offset, data)
                except Exception:  # the period's buffer is full: the rest go out in the next one
                    break
                heapq.heappop(pending)
                self.written += 1
        except Exception:  # noqa: BLE001 -- raising here would take the client out of JACK's graph
            self.dropped += len(self._pending)
            self._pending.clear()

    def _shutdown(self, status, reason) -> None:
        self.gone = True


class JackInput:
    """A JACK MIDI input port whose messages are stamped with the time of their frame.

    callback(msg, t): called on this port's delivery thread for every message, ``t`` in monotonic seconds.
    """

    def __init__(self, callback: Callable[[mido.Message, float], None], name: str = CLIENT_NAME,
                 port: str = IN_PORT_NAME):
        self.callback = callback
        self.client = _client(name)
        self.garbled = 0  # events that are not MIDI messages mido knows (the delivery thread's)
        self.closed = False
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # process callback -> delivery thread
        try:
            self.port = self.client.midi_inports.register(port)
            self.name = self.port.name
            self.source: str | None = None  # the port it listens to (open_input)
            self.clock = FrameClock(self.client)
            self._thread = threading.Thread(target=self._deliver, name="improviser-jack-input", daemon=True)
            self._thread.start()
            self.client.set_process_callback(self._process)
            self.client.activate()
        except Exception as e:  # JACK refused the port: do not leave the client open
            self._events.put(None)
            self.client.close()
            raise PortError(f"cannot open JACK MIDI input {name}:{port}: {e}") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.deactivate()
        self.client.close()
        self._events.put(None)
        self._thread.join()

    def _process(self, frames: int) -> None:
        try:
            start = self.clock.update()
            rate = self.clock.rate
            events = [(start + offset / rate, bytes(data)) for offset, data in self.port.incoming_midi_events()]
            if events:
                self._events.put(events)
        except Exception:  # noqa: BLE001 -- raising here would take the client out of JACK's graph
            pass

    def _deliver(self) -> None:
        while (events := self._events.get()) is not None:
            self.garbled += deliver(events, self.callback)


def deliver(events: list[tuple[float, bytes]], callback: Callable[[mido.Message, float], None] | None) -> int:
    """Parse each (time, bytes) input event and call ``callback(msg, t)`` (None: parse only); returns how many
    were not MIDI messages mido knows. The listener's own failure is logged and never ends the listening."""
    garbled = 0
    for t, data in events:
        try:
            msg = mido.Message.from_bytes(data)
        except (ValueError, TypeError):
            garbled += 1
            continue
        if callback is None:
            continue
        try:
            callback(msg, t)
        except Exception as e:  # noqa: BLE001
            log.exception("MIDI input callback: %s", e)
    return garbled


def _connected(port, connect: Callable[[], str], failure: str) -> str:
    """``connect()`` (which returns the full name of the port it connected to); if it fails, ``port`` is
    closed and one PortError says ``failure`` and why."""
    try:
        return connect()
    except BaseException as e:
        port.close()
        if isinstance(e, PortError):
            raise
        raise PortError(f"{failure}: {e}") from None


def open_output(name: str | None = None, margin: float = MARGIN) -> JackOutput:
    """Our output port ``improviser:out``, connected to the existing port matching ``name`` if given."""
    out = JackOutput(margin=margin)
    if name is not None:
        def connect() -> str:
            full = find_port(out.output_names(), name, "output")
            out.client.connect(out.port, full)
            return full

        out.target = _connected(out, connect, f"cannot connect to JACK MIDI input {name!r}")
    return out


def open_input(callback: Callable[[mido.Message, float], None], name: str | None = None) -> JackInput:
    """Our input port ``improviser:in``, listening to the existing port matching ``name`` unless it is None or
    ``virtual``."""
    port = JackInput(callback)
    if name is not None and name != "virtual":
        def connect() -> str:
            names = [p.name for p in port.client.get_ports(is_midi=True, is_output=True)]
            full = find_port(names, name, "input")
            port.client.connect(full, port.port)
            return full

        port.source = _connected(port, connect, f"cannot listen to JACK MIDI output {name!r}")
    return port
