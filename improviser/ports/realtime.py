"""The real-time side: a small process that owns the JACK ports and never waits for the model.

Why a process of its own. A JACK process callback written in Python must take the GIL in every
period. In the process that also runs the model, the listening part and the recorder, it waited for
them: at 32 and 64 frames (0.7 and 1.3 ms periods), under a keyboard sending ~1,000 messages a second,
onsets moved by 24 and 57 ms (p99) and JACK reported xruns. The GIL is one per process, so the
callback now lives in a process where nothing else holds it for long:

    real-time process (this module; the one the user started)          worker process (``remote``)
    ─────────────────────────────────────────────────────────          ─────────────────────────────
    JACK's thread: process callback, every period                      the engine: model, listening,
      reads the input port: thru (on the same frames, one                recorder, synth, sessions
      period later), stamps each event with its frame's time ──HEARD──► a reader thread: the input
      writes every handed message on the frame of its time ◄──SEND───── callback, as a port's would
      silences everything on a panic (the worker gone)                  the sender, ``lead`` ahead
    reader thread: the socket -> the callback's inbox, a journal
    delivery thread: the callback's events -> the socket
    watcher thread: a stalled worker; the --output peer's connection
    main thread: waits for the worker; forwards Ctrl-C and SIGTERM

None of these threads does more than a few microseconds of Python between blocking calls (a socket read,
a queue get, a sleep), so the callback gets the GIL at once: a short switch interval (``SWITCH_INTERVAL``)
bounds the wait even when one of them is mid-work.

The real-time side owns silence. It tracks every note it writes (the worker's and the player's thru)
and, when the worker dies (its socket ends without a ``CLOSE``) or stalls (no step handed over
``STALL_SECONDS`` after it promised one), drops what is still queued and writes a note-off for every
sounding note and CC 123 on every channel used, in the next period. On a clean close it drains what was
handed, then turns off what still sounds (a thru'd note the player still holds).

Shared state and who owns it:
- ``_inbox`` (deque): appended by the reader thread, emptied by the callback; ``_pending`` (heap),
  ``_sounding``, ``_channels`` and the counters ``written``, ``late``, ``dropped``, ``thru``: the
  callback's own (read by others only as plain values, after the fact).
- ``_heard`` (SimpleQueue, never blocks a put): the callback puts a list per period, the delivery thread
  takes them.
- ``_panic``: 0, then set to 1 (silence everything) or 2 (silence what sounds) by any thread; the
  callback sets it to 3 when it has written every note-off.
- ``journal`` (deque of (t, bytes, track)): appended by the reader and delivery threads, trimmed by the
  reader thread, read by the main thread after the worker is gone.
- ``xruns``: JACK's notification thread.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable

from ..errors import PortError
from . import wire
from .jack_midi import FrameClock, _client
from .midi import CLIENT_NAME, IN_PORT_NAME, PORT_NAME, find_port

log = logging.getLogger(__name__)

MARGIN = 0.005  # s: beyond the period, for the worker's sender to wake, hand over and the socket to carry it
THREAD_PRIORITY = 5  # SCHED_FIFO for this process's own threads: below JACK's (10, its clients 9), above the rest
HOP_MARGIN = 0.0001  # s: beyond the period, from an input's frame to the soonest frame an answer can take
STALL_SECONDS = 0.1  # s: a worker this late with a step it promised is taken to have stalled
SWITCH_INTERVAL = 0.0001  # s: the longest another thread of this process keeps the GIL from the callback
POLL_SECONDS = 0.25  # s: how often the watcher looks at the --output peer
WATCH_SECONDS = 0.01  # s: how often it looks for a stalled worker
MAX_DRAIN_SECONDS = 1.0  # on close: the longest wait for what was handed to be written
THRU_KINDS = (0x80, 0x90, 0xB0)  # note-off, note-on, control change: what --thru forwards (as listen.MUSIC)
SEND_KINDS = {1: (0xC0, 0xD0), 2: (0x80, 0x90, 0xA0, 0xB0, 0xE0)}  # data bytes -> status kinds of that length


def _valid(data: bytes) -> bool:
    """A channel message of the right length (what the worker may hand over: nothing else is written)."""
    return 2 <= len(data) <= 3 and (data[0] & 0xF0) in SEND_KINDS[len(data) - 1] and all(b < 0x80 for b in data[1:])


class RealtimeSide:
    """One JACK client with an output port (and an input port), its process callback, and the worker's link.

    output: connect ``improviser:out`` to the JACK MIDI input matching this name (None: leave it for others
    to connect); it is reconnected when that program quits and comes back. input: None (no input port),
    ``virtual`` (an input port for others to connect) or the name of a JACK MIDI output to listen to.
    thru: forward the player's notes and controls to the output on their own frames, one period later.
    warn, info: one line each when the output peer is lost or back, or the worker stalls.
    """

    def __init__(self, output: str | None = None, input: str | None = None, thru: bool = False,
                 margin: float = MARGIN, warn: Callable[[str], None] | None = None,
                 info: Callable[[str], None] | None = None):
        self._setup(output, input, thru, warn, info)
        self.client = _client(CLIENT_NAME)
        try:
            self.outport = self.client.midi_outports.register(PORT_NAME)
            self.inport = self.client.midi_inports.register(IN_PORT_NAME) if input is not None else None
            self.name = self.outport.name
            self.in_name = self.inport.name if self.inport is not None else None
            self.clock = FrameClock(self.client)
            self.rate = self.clock.rate
            self.period = self.client.blocksize / self.rate
            self.lead = self.period + margin
            self.hop = self.period + HOP_MARGIN
            self.client.set_process_callback(self._process)
            self.client.set_xrun_callback(self._xrun)
            self.client.set_shutdown_callback(self._shutdown)
            self.client.activate()
        except Exception as e:  # JACK refused the ports: do not leave the client open
            self.client.close()
            raise PortError(f"cannot open JACK MIDI ports {CLIENT_NAME}:{PORT_NAME}: {e}") from None
        try:
            if output is not None:
                self.connected_to = self._connect_output(output)
            if input is not None and input != "virtual":
                names = [p.name for p in self.client.get_ports(is_midi=True, is_output=True)]
                self.source = find_port(names, input, "input")
                self.client.connect(self.source, self.inport)
        except BaseException as e:
            self.close()
            if isinstance(e, PortError):
                raise
            raise PortError(f"cannot connect JACK MIDI ports: {e}") from None
        self._watcher = self._thread(self._watch, "improviser-rt-watch")

    def _setup(self, output: str | None, input: str | None, thru: bool, warn, info) -> None:
        """The state every real-time side has, whatever its MIDI system."""
        self.warn = warn or log.warning
        self.info = info or log.info
        self.thru_on = bool(thru) and input is not None
        self.written = self.late = self.dropped = self.thru = self.garbled = 0  # the callback's counts
        self.handed = 0  # messages handed over (reader thread)
        self.heard = 0  # input events passed on to the worker (delivery thread)
        self.xruns = 0  # JACK's notification thread
        self.stalls = 0  # the watcher's
        self.gone = False  # the JACK server shut us down (JACK's thread), and why
        self.gone_why = ""
        self.closed = False
        self.journal: collections.deque = collections.deque()
        self.session: dict | None = None  # the journal's session (reader thread; read after the worker ends)
        self.previous: dict | None = None
        self.clean = False  # the worker closed its port (reader thread)
        self.lost_at: float | None = None  # when the worker's socket ended without a close
        self._conn = None
        self._conn_lock = threading.Lock()  # the delivery and reader threads both write to the socket
        self._inbox: collections.deque = collections.deque()
        self._pending: list = []  # heap of (time, seq, bytes, timed): the callback's own
        self._seq = itertools.count()
        self._last_at = 0.0  # the latest time handed over (reader thread)
        self._heard: queue.SimpleQueue = queue.SimpleQueue()
        self._sounding: set[int] = set()  # channel * 128 + pitch of every note the port sounds (callback)
        self._channels: set[int] = set()  # every channel a note went out on (callback)
        self._panic = 0
        self._beat_due = math.inf  # by when the worker promised its next step (reader; read by the watcher)
        self.wanted = output
        self.connected_to: str | None = None
        self.source: str | None = None  # the MIDI output the input port listens to
        self.in_name: str | None = None
        self._stop = threading.Event()


    def facts(self) -> dict:
        """What the worker's port objects need to know about the ports (plain data, for the HELLO)."""
        return {"name": self.connected_to or self.name, "port": self.name, "target": self.connected_to,
                "lead": self.lead, "hop": self.hop, "period": self.period, "input": self.in_name,
                "source": self.source, "thru": self.thru_on}

    # ---- the worker's link (reader and delivery threads) -------------------------------------------

    def serve(self, conn) -> None:
        """Start passing messages to and from the worker on ``conn`` (a multiprocessing Connection)."""
        self._conn = conn
        self._thread(self._read, "improviser-rt-read")
        self._thread(self._deliver, "improviser-rt-deliver")

    @staticmethod
    def _thread(target, name: str, priority: int = 0) -> threading.Thread:
        """A thread of this process, under SCHED_FIFO where allowed: one that holds the GIL must not be
        preempted by the worker or any other busy process while the process callback waits for it."""
        def run():
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority or THREAD_PRIORITY))  # this thread
            except (AttributeError, OSError):  # not Linux, or no rtprio rights: an ordinary thread
                pass
            target()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _write(self, record: bytes) -> None:
        with self._conn_lock:
            try:
                self._conn.send_bytes(record)
            except (OSError, ValueError):  # the worker is gone: the reader thread says so
                pass

    def _read(self) -> None:
        conn = self._conn
        while True:
            try:
                record = conn.recv_bytes()
            except (EOFError, OSError):
                break
            kind = record[:1]
            if kind == wire.SEND:
                self._hand(wire.unpack_events(record))
            elif kind == wire.BEAT:
                self._beat_due = wire.unpack_time(record)
            elif kind == wire.JOURNAL:
                self._begin_session(pickle.loads(record[1:]))
            elif kind == wire.QUERY:
                self._write(wire.REPLY + pickle.dumps(self._answer(pickle.loads(record[1:]))))
            elif kind == wire.CLOSE:
                self._drain()
                self._silence(everything=False)
                self.clean = True
                self._write(wire.REPLY + pickle.dumps(self._answer("counts")))
        if not self.clean:  # the worker died: silence at once, before anyone asks
            self.lost_at = time.monotonic()
            self._silence(everything=True)
        self._heard.put(None)

    def _hand(self, events: list[tuple[float, bytes]]) -> None:
        now = time.monotonic()
        for at, data in events:
            if not _valid(data):
                self.garbled += 1
                continue
            timed = not math.isnan(at)
            if not timed:  # as soon as possible, but after everything handed before it
                at = max(now, self._last_at)
            self._last_at = max(self._last_at, at)
            self._queue(at, data, timed)
            self.journal.append((at, data, "improviser"))
            self.handed += 1

    def _queue(self, at: float, data: bytes, timed: bool) -> None:
        """Pass one message on to be written at ``at`` (the reader thread)."""
        self._inbox.append((at, next(self._seq), data, timed))

    def _begin_session(self, spec: dict) -> None:
        """A session begins at ``spec['start']``: the journal keeps it and the one before (which the worker
        may still be writing)."""
        if self.session is not None:
            self.previous = self.session
        self.session = spec
        keep_from = (self.previous or spec)["start"]
        journal = self.journal
        while journal and journal[0][0] < keep_from:
            journal.popleft()

    def _answer(self, what: str):
        if what == "outputs":
            return {"outputs": [p.name for p in self.client.get_ports(is_midi=True, is_input=True)]}
        return {"late": self.late, "written": self.written, "dropped": self.dropped, "xruns": self.xruns,
                "thru": self.thru, "garbled": self.garbled, "stalls": self.stalls}

    def _deliver(self) -> None:
        while (events := self._heard.get()) is not None:
            self.heard += len(events)
            if self.clean or self.lost_at is not None:
                continue
            for t, data in events:
                if data and (data[0] & 0xF0) in (0x80, 0x90):
                    self.journal.append((t, data, "player"))
            self._write(wire.pack_events(wire.HEARD, events))

    def _drain(self) -> None:
        """Wait (up to MAX_DRAIN_SECONDS) until everything handed over has been written."""
        deadline = time.monotonic() + MAX_DRAIN_SECONDS
        while not self.gone and self.written + self.dropped < self.handed and time.monotonic() < deadline:
            time.sleep(self.period / 4)

    def _silence(self, everything: bool) -> None:
        """Have the callback drop what is queued (``everything``) and turn off what sounds; wait until it has."""
        if self._panic == 0 or (everything and self._panic == 2):
            self._panic = 1 if everything else 2
        deadline = time.monotonic() + 0.5
        while not self.gone and self._panic != 3 and time.monotonic() < deadline:
            time.sleep(self.period / 4)

    # ---- the watcher thread ---------------------------------------------------------------------------

    def _watch(self) -> None:
        last_poll = 0.0
        said_gone = False
        while not self._stop.wait(WATCH_SECONDS):
            now = time.monotonic()
            if self.gone and not said_gone:  # (a server that stops, or one that dropped us for being too slow)
                said_gone = True
                self.warn(f"the JACK server shut the improviser's ports down ({self.gone_why or 'no reason given'}): "
                          "nothing is played or heard any more; still recording")
            if now > self._beat_due + STALL_SECONDS and self._stall():
                self.stalls += 1
                self.warn("the worker process is late with its next step: every sounding note turned off")
            if self.wanted is not None and now - last_poll > POLL_SECONDS:
                last_poll = now
                try:
                    self._check_output()
                except Exception as e:  # noqa: BLE001 -- listing failed (the server is busy): no news this time
                    log.debug("watching the MIDI output: %s", e)

    def _stall(self) -> bool:
        """The worker missed its step: turn off what sounds (True), if anything does."""
        self._beat_due = math.inf
        if not self._sounding or self._panic != 0:
            return False
        self._silence(everything=False)
        if not self.clean and self.lost_at is None:
            self._panic = 0  # silenced; the worker may come back
        return True

    def _connect_output(self, wanted: str) -> str:
        names = [p.name for p in self.client.get_ports(is_midi=True, is_input=True)]
        full = find_port(names, wanted, "output")
        self.client.connect(self.outport, full)
        return full

    def _check_output(self) -> None:
        """Notice a lost --output peer, or connect to one that is back (the same words as ``reconnect``)."""
        connections = [p.name for p in self.client.get_all_connections(self.outport)]
        if self.connected_to is not None:
            if self.connected_to in connections:
                return
            self.warn(f"lost MIDI output {self.connected_to!r} (its port is gone); still playing and recording, "
                      f"and will reconnect when a port matching {self.wanted!r} is back")
            self.lost_name, self.connected_to = self.connected_to, None
        try:
            names = [p.name for p in self.client.get_ports(is_midi=True, is_input=True)]
            full = self.lost_name if self.lost_name in names else find_port(names, self.wanted, "output")
            self.client.connect(self.outport, full)
        except PortError:
            return
        self.connected_to = full
        self.info(f"reconnected to MIDI output {full!r}")

    lost_name = ""

    # ---- JACK's threads -------------------------------------------------------------------------------

    def _process(self, frames: int) -> None:
        try:
            start = self.clock.update()
            rate = self.rate
            out = self.outport
            out.clear_buffer()
            thru = []
            if self.inport is not None:
                heard = []
                for offset, data in self.inport.incoming_midi_events():
                    data = bytes(data)
                    heard.append((start + offset / rate, data))
                    if self.thru_on and len(data) >= 2 and (data[0] & 0xF0) in THRU_KINDS:
                        thru.append((offset, data))
                if heard:
                    self._heard.put(heard)
            if self._panic in (1, 2):
                self._write_silence(out, everything=self._panic == 1)
                return
            pending, inbox = self._pending, self._inbox
            while inbox:
                heapq.heappush(pending, inbox.popleft())
            own = []
            while pending:
                at, _, data, timed = pending[0]
                frame = round((at - start) * rate)
                if frame >= frames:
                    break  # due in a later period
                if frame < 0:
                    frame = 0
                    if timed:
                        self.late += 1  # its period has passed: now, at the start of this one
                own.append((frame, heapq.heappop(pending)))
            self._write_events(out, thru, own)
        except Exception:  # noqa: BLE001 -- raising here would take the client out of JACK's graph
            self.dropped += len(self._pending)
            self._pending.clear()

    def _write_events(self, out, thru: list, own: list) -> None:
        """Write the period's thru and own events in order of their frames (JACK wants them so)."""
        events = [(offset, 0, data, None) for offset, data in thru] + [(f, 1, item[2], item) for f, item in own]
        events.sort(key=lambda e: (e[0], e[1]))
        last = 0
        for i, (offset, _, data, item) in enumerate(events):
            last = max(last, offset)
            try:
                out.write_midi_event(last, data)
            except Exception:  # noqa: BLE001 -- the period's buffer is full: own ones go out in the next
                for _, _, _, rest in events[i:]:
                    if rest is not None:
                        heapq.heappush(self._pending, rest)
                    else:
                        self.dropped += 1
                return
            if item is None:
                self.thru += 1
            else:
                self.written += 1
            self._track(data)

    def _track(self, data: bytes) -> None:
        kind, channel = data[0] & 0xF0, data[0] & 0x0F
        if kind == 0x90 and data[2] > 0:
            self._sounding.add(channel * 128 + data[1])
            self._channels.add(channel)
        elif kind in (0x80, 0x90):
            self._sounding.discard(channel * 128 + data[1])

    def _write_silence(self, out, everything: bool) -> None:
        """The panic: drop what is queued (everything) and write note-offs for what sounds, then CC 123."""
        if everything:
            self.dropped += len(self._pending) + len(self._inbox)
            self._pending.clear()
            self._inbox.clear()
        offs = [bytes((0x80 | key >> 7, key & 0x7F, 0)) for key in sorted(self._sounding)]
        channels = sorted(self._channels) if everything else sorted({key >> 7 for key in self._sounding})
        offs += [bytes((0xB0 | ch, 123, 0)) for ch in channels]
        for data in offs:
            try:
                out.write_midi_event(0, data)
            except Exception:  # noqa: BLE001 -- buffer full: the rest in the next period
                return
            if data[0] & 0xF0 == 0x80:
                self._sounding.discard((data[0] & 0x0F) * 128 + data[1])
        if everything:
            self._channels.clear()
        self._panic = 3

    def _xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1

    def _shutdown(self, status, reason) -> None:
        self.gone_why = str(reason)
        self.gone = True

    # ---- the end ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Turn off anything still sounding, let the receivers read it, and close the client."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if not self.gone:
            if self._sounding:
                self._panic = 0 if self._panic == 3 else self._panic
                self._silence(everything=True)
            time.sleep(2 * self.period)  # the cycle that wrote the last ones has been read by the clients after us
            self.client.deactivate()
        self.client.close()


def realtime_settings() -> None:
    """The real-time process's own settings, made once at its start: a short switch interval (see above)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
