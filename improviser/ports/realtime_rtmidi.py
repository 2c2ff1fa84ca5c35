"""The real-time side on a MIDI system without frames: ALSA, CoreMIDI, and python-rtmidi's JACK backend.

The same split as ``realtime`` (read it first): the worker hands each message over ``MARGIN`` ahead with
its time; here there is no period to place it in, so a sender thread of this process sends it at that
time (sleep, then spin the last ``SPIN_SECONDS``, under SCHED_FIFO where allowed), with nothing of the
model's in the way. The player's input comes on python-rtmidi's own thread: it is stamped with the
monotonic clock on arrival, forwarded at once with ``--thru``, and passed on to the worker.

Threads and shared state, beyond those of ``realtime.RealtimeSide``:
- ``_heap`` (of (time, seq, bytes)): pushed by the reader thread, popped by the sender, under ``_cond``;
- the output (``midi.OutputPort``, which locks each send and tracks what sounds): the sender, the input's
  thread (thru) and the stop paths;
- ``--output NAME`` is a ``reconnect.ReconnectingOutput``: its watcher thread brings the peer back.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

import mido

from ..errors import PortError
from .midi import open_input, open_output
from .realtime import MARGIN, RealtimeSide
from .reconnect import open_reconnecting_output

SPIN_SECONDS = 0.001  # the sender spins the last millisecond before a message's time (a sleep wakes late)
LATE_SECONDS = 0.001  # a message sent more than this after its time is counted late
SENDER_PRIORITY = 10  # SCHED_FIFO of the sender: it sends on the dot, and sleeps or spins only briefly
THRU = ("note_on", "note_off", "control_change")


class RtmidiSide(RealtimeSide):
    """An rtmidi output port (and input port) on ``api``, a sender thread, and the worker's link.

    output, input, thru, warn, info: as for ``RealtimeSide``. jack_backend: "rtmidi" with ``api`` "jack".
    """

    def __init__(self, api: str | None, output: str | None = None, input: str | None = None, thru: bool = False,
                 margin: float = MARGIN, warn: Callable[[str], None] | None = None,
                 info: Callable[[str], None] | None = None, jack_backend: str | None = None):
        self._setup(output, input, thru, warn, info)
        self.xruns = None  # (rtmidi cannot see them)
        self.period, self.lead, self.hop = 0.0, margin, 0.0
        self._heap: list = []
        self._cond = threading.Condition()
        if output is None:
            self.out = open_output(api, None, jack_backend)
        else:
            self.out = open_reconnecting_output(api, output, warn=self.warn, info=self.info, jack_backend=jack_backend)
            self.connected_to = self.out.name
        self.name = self.out.name
        self.inport = None
        try:
            if input is not None:
                self.inport = open_input(self._on_input, api, input, jack_backend)
                self.in_name = getattr(self.inport, "name", input)
                self.source = None if input == "virtual" else self.in_name
        except BaseException:
            self.out.close()
            raise
        self.wanted = None  # (the reconnecting output watches its own peer)
        self._sender = self._thread(self._send_loop, "improviser-rt-send", SENDER_PRIORITY)
        self._watcher = self._thread(self._watch, "improviser-rt-watch")

    # ---- the input (python-rtmidi's thread) -------------------------------------------------------------

    def _on_input(self, msg: mido.Message) -> None:
        t = time.monotonic()
        if self.thru_on and msg.type in THRU:
            try:
                self.out.send(msg)
                self.thru += 1
            except Exception:  # noqa: BLE001 -- a port that went away must not stop the listening
                self.dropped += 1
        self._heard.put([(t, bytes(msg.bytes()))])

    # ---- the worker's messages (reader thread) and the sender -------------------------------------------

    def _queue(self, at: float, data: bytes, timed: bool) -> None:
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._seq), data))
            self._cond.notify()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._heap:
                    self._cond.wait(0.1)
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > SPIN_SECONDS:
                    self._cond.wait(left - SPIN_SECONDS)  # woken early by a message due sooner
                    continue
            at = self._heap[0][0]
            while time.monotonic() < at:
                pass
            with self._cond:
                due = []
                while self._heap and self._heap[0][0] <= at:
                    due.append(heapq.heappop(self._heap))
            for when, _, data in due:
                if self._panic in (1, 2):
                    break
                try:
                    self.out.send(mido.Message.from_bytes(data))
                except Exception:  # noqa: BLE001 -- a send that fails is counted, the music goes on
                    self.dropped += 1
                    continue
                self.written += 1
                if time.monotonic() - when > LATE_SECONDS:
                    self.late += 1

    def _drain(self) -> None:
        deadline = time.monotonic() + 1.0
        while self.written + self.dropped < self.handed and time.monotonic() < deadline:
            time.sleep(0.002)

    def _silence(self, everything: bool) -> None:
        """Drop what is queued (everything) and turn off what sounds, then CC 123 (``OutputPort.silence``)."""
        if everything:
            self._panic = 1
            with self._cond:
                self.dropped += len(self._heap)
                self._heap.clear()
        try:
            self.out.silence()
        except Exception:  # noqa: BLE001 -- the port is gone: nothing sounds on it any more
            pass
        self._panic = 3

    def _stall(self) -> bool:
        self._beat_due = float("inf")
        if not self.out.sounding() or self._panic != 0:
            return False
        self.out.silence()
        return True

    def _answer(self, what: str):
        if what == "outputs":
            try:
                return {"outputs": list(self.out._port.port._rt.get_ports())}
            except Exception:  # noqa: BLE001 -- a port that cannot list: none known
                return {"outputs": []}
        return super()._answer(what)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self.inport is not None:
            try:
                self.inport.close()
            except Exception as e:  # noqa: BLE001
                raise PortError(f"closing the MIDI input: {e}") from None
        self.out.close()  # silences what still sounds
