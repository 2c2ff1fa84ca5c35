"""The conductor: decides *when* each step is played. No MIDI, no model; time is injected.

Where the time of step ``k`` comes from is a *timing source*, one of:

- ``TempoGrid``: the internal clock. Step ``k`` is due at ``t0 + k * step_seconds``
  on a monotonic clock, computed afresh for every step (never chained sleeps),
  so small errors never add up into drift. A tempo change re-anchors ``t0`` at
  the next step, so that step keeps its deadline and only the spacing after it
  changes: no jump, no burst.
- ``sync.MidiClockSync``: the 16th notes of a DAW's 24 ppqn MIDI clock.

Both answer the same three questions through the injected clock: ``slot(k)``
(is step k to be played, skipped because the music has moved past it, or is the
music paused; and by when must its item be ready), ``wait(k)`` (block until it is
due, then return the time) and ``deadline(k)`` (when it was or will be due).
The sender sleeps until ~1 ms before a deadline and then spins on the clock for
the rest, because a sleep alone wakes up a variable fraction of a millisecond late.

Two threads share the work:

- the *producer* calls ``produce(k)`` (the model: ~0.3 ms) ahead of time and
  puts the result in a small bounded queue; it blocks only when it is
  ``lookahead`` steps ahead;
- the *sender* (the thread that calls ``run``) takes item ``k`` from the queue,
  calls ``prepare(k, item)`` (turn it into messages, well before the deadline),
  waits for the timing source and calls ``perform(k, payload, t)`` (send them).
  On the real clock it asks for SCHED_FIFO where allowed, so a busy machine
  does not wake it late.

With a ``lead`` (a port that places each message on its own sample, such as the
JACK backend), the sender wakes ``lead`` seconds before each deadline (a sleep,
no spin: the port keeps the time) and ``perform`` gets the deadline as ``t``:
the messages are handed over early with the time they are due.

The sender never waits on the model beyond a deadline. If item ``k`` is not
ready ``spin`` seconds before it is due, step ``k`` is **skipped**: nothing
is sent for it (the notes already sounding simply go on), it is counted in
``stats.late_steps`` and logged, and the item is dropped when it arrives. The
grid is never shifted: step ``k + 1`` is still due at its own time. Skipping
rather than playing late keeps every played note on the grid; it is safe
because ``prepare`` works from what actually sounds, not from the skipped frame.

Shared state, and who owns it:
- the item queue: written by the producer, read by the sender (a bounded ``queue.Queue``);
- ``TempoGrid``'s pending tempo: written by any thread (``set_step_seconds``), applied
  by the sender before its next step, both under the grid's lock: a change is never lost;
- the stop flag: a ``threading.Event``, set from any thread or a signal handler;
- ``stats``: written by the sender only; read by others after ``run`` (or as a
  snapshot of plain numbers, never iterated while the sender runs).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import heapq
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

SPIN_SECONDS = 0.001  # spin on the clock for the last millisecond before a deadline
SENDER_PRIORITY = 10  # SCHED_FIFO of a sender that sends on the dot (a port without a lead)
LEAD_PRIORITY = 5  # ... and of one that hands messages over ahead: below JACK's threads (10, clients 9)
MAX_SLEEP = 0.05  # sleep in slices no longer than this, so stop() is noticed quickly
START_DELAY = 0.1  # the first step is due this long after run(): time for the producer to get ahead
LATE_KEPT = 1000  # the indices of the most recent skipped steps kept (the count is kept whole)


class Clock(Protocol):
    """Where the conductor reads time and sleeps. ``now`` is monotonic seconds.

    ``wait(condition, seconds)``: with ``condition`` held, wait until it is notified or
    ``seconds`` pass (the real clock), or let ``seconds`` pass (a virtual clock).
    """

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, condition: threading.Condition, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` (the same clock in every process, so tests can compare)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        condition.wait(max(0.0, seconds))


class VirtualClock:
    """A clock that only moves when asked: ``sleep`` jumps ahead at once (offline runs, tests).

    tick: how far each ``now()`` call advances time, so a spin on this clock ends.
    overshoot: called with the requested sleep, returns extra seconds the sleep
        takes (to imitate a real sleep waking late).
    ``at(t, fn)`` schedules ``fn()`` for virtual time ``t``: it runs, on the thread that moves
    time past ``t``, with the clock reading ``t`` -- a DAW's clock ticks or a player's notes
    arriving at their moment, deterministic, in a test or an offline run.
    """

    def __init__(self, start: float = 0.0, tick: float = 1e-6,
                 overshoot: Callable[[float], float] | None = None):
        self.t = start
        self.tick = tick
        self.overshoot = overshoot
        self._lock = threading.Lock()  # guards t and the events; never held while an event runs
        self._events: list[tuple[float, int, Callable[[], None]]] = []  # a heap by time
        self._n = 0
        self._local = threading.local()  # per thread: is it running events now

    def now(self) -> float:
        with self._lock:
            self.t += self.tick
            t = self.t
        self._fire(t)
        return t

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds) + (self.overshoot(seconds) if self.overshoot else 0.0))

    def wait(self, condition: threading.Condition, seconds: float) -> None:
        self.sleep(seconds)  # events due meanwhile run here, and may notify the condition

    def advance(self, seconds: float) -> None:
        with self._lock:
            target = self.t + seconds
        self._fire(target)
        with self._lock:
            self.t = max(self.t, target)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._events, (t, self._n, fn))
            self._n += 1

    def _fire(self, until: float) -> None:
        """Run the events due by ``until`` in time order, each with the clock reading its time.

        Not re-entrant: an event that reads the clock does not run the next event inside itself
        (two messages due at the same moment arrive in the order they were scheduled).
        """
        if getattr(self._local, "firing", False):
            return
        self._local.firing = True
        try:
            while True:
                with self._lock:
                    if not self._events or self._events[0][0] > until:
                        return
                    t, _, fn = heapq.heappop(self._events)
                    self.t = max(self.t, t)
                fn()
        finally:
            self._local.firing = False


@dataclass
class ConductorStats:
    """What happened while playing; times in seconds."""

    steps: int = 0  # steps whose deadline has passed (played or skipped)
    played: int = 0
    late_steps: int = 0  # skipped because the producer was not ready (or the music had moved past them)
    late_indices: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATE_KEPT))
    max_send_delay: float = 0.0  # worst (perform time - deadline [- lead]) over played steps


class Slot(enum.Enum):
    """What a timing source says of the next step."""

    PLAY = "play"  # to be played at its time
    BEHIND = "behind"  # the music has moved past it: skip it, keep the grid
    PAUSED = "paused"  # the music stopped (or restarted): silence what sounds, then ask again
    STOPPED = "stopped"  # the run is over


class TimingSource(Protocol):
    """When steps are due. Called by the sender thread only, except ``set_step_seconds`` (any thread)."""

    def begin(self, first: float, next_step: int) -> None: ...

    def slot(self, k: int, stop: threading.Event) -> tuple[Slot, float]: ...

    def wait(self, k: int, stop: threading.Event, lead: float = 0.0) -> float | None: ...

    def deadline(self, k: int) -> float: ...

    def set_step_seconds(self, step_seconds: float) -> bool: ...


class TempoGrid:
    """The internal clock: step ``k`` is due at ``t0 + k * step_seconds``; tempo changes re-anchor ``t0``.

    step_seconds: the grid spacing (60 / bpm / steps_per_beat). spin: the last stretch spun, not slept.
    """

    def __init__(self, step_seconds: float, clock: Clock | None = None, spin: float = SPIN_SECONDS):
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        self.clock = clock or MonotonicClock()
        self.spin = spin
        self.step_seconds = step_seconds  # written by the sender only (under _lock); read by any thread
        self.t0: float | None = None  # deadline of step 0; set by begin(), moved by tempo changes (sender)
        self._pending: float | None = None  # a tempo change not yet applied: written by any thread, under _lock
        # A new grid from step k on, not yet applied: (k, its deadline, step_seconds). Posted by the producer
        # (``retime``) for a step the sender has not asked for; ``deadline`` already answers with it.
        self._retimed: tuple[int, float, float] | None = None
        self._lock = threading.Lock()

    def begin(self, first: float, next_step: int) -> None:
        if self.t0 is None:
            self.t0 = first - next_step * self.step_seconds

    def set_step_seconds(self, step_seconds: float) -> bool:
        """Change tempo (any thread); the next step the sender asks for keeps its time. Always followed."""
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        with self._lock:
            self._pending = step_seconds
        return True

    def retime(self, k: int, due: float, step_seconds: float) -> float:
        """From step ``k`` on, the grid is ``due + (j - k) * step_seconds`` (the player's tempo and phase: ``--bpm
        auto``). For a step the sender has not reached yet (the producer's next one); never earlier than half a
        step after step k - 1. Returns step k's deadline."""
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        with self._lock:
            due = max(due, self._deadline(k - 1) + step_seconds / 2)
            self._retimed = (k, due, step_seconds)
            self._pending = None  # (a tempo asked for before it is overtaken by this one)
        return due

    def slot(self, k: int, stop: threading.Event) -> tuple[Slot, float]:
        with self._lock:  # take a pending tempo change, if any, in one piece
            if self._retimed is not None and k >= self._retimed[0]:
                j, due, step = self._retimed
                # The new grid first, then the pending one goes: another thread's ``deadline`` (which reads
                # ``_retimed`` once) never sees a step >= j on a half-written grid.
                self.step_seconds, self.t0 = step, due - j * step
                self._retimed = None
            new, self._pending = self._pending, None
            if new is not None:
                due = self.t0 + k * self.step_seconds
                self.step_seconds = new
                self.t0 = due - k * new  # step k keeps its deadline; the spacing after it changes
        return (Slot.STOPPED if stop.is_set() else Slot.PLAY), self.deadline(k)

    def deadline(self, k: int) -> float:
        """When step ``k`` is due (once ``begin`` has run)."""
        assert self.t0 is not None, "the grid has not started"
        return self._deadline(k)

    def _deadline(self, k: int) -> float:
        r = self._retimed  # (one read: the tuple is replaced whole)
        if r is not None and k >= r[0]:
            return r[1] + (k - r[0]) * r[2]
        return self.t0 + k * self.step_seconds

    def index_at(self, t: float) -> float:
        """Where time ``t`` falls on the grid, in steps (fractional; with a pending retime, on the new grid past
        its first step)."""
        assert self.t0 is not None, "the grid has not started"
        r = self._retimed
        if r is not None and t >= r[1]:
            return r[0] + (t - r[1]) / r[2]
        return (t - self.t0) / self.step_seconds

    def wait(self, k: int, stop: threading.Event, lead: float = 0.0) -> float | None:
        """Until ``lead`` before step k's deadline: sleep to ~spin before it, then spin (no spin with a lead).

        Returns when the step sounds (its deadline, or the clock if that has passed), or None if stopped.
        """
        deadline = self.deadline(k)
        if not wait_until(self.clock, deadline - lead, stop, 0.0 if lead else self.spin):
            return None
        return max(deadline, self.clock.now())


def wait_until(clock: Clock, deadline: float, stop: threading.Event, spin: float = SPIN_SECONDS) -> bool:
    """Sleep until about ``spin`` before ``deadline``, then spin. False if stopped meanwhile."""
    while True:
        left = deadline - clock.now()
        if left <= spin:
            break
        if stop.is_set():
            return False
        clock.sleep(min(left - spin, MAX_SLEEP))
    while clock.now() < deadline:  # the last ~millisecond: spin, a sleep would wake up late
        pass
    return True


class ProducerEnded:
    """The queue's last item: the producer has stopped (its error, if any, is on the conductor)."""


PRODUCER_ENDED = ProducerEnded()


class Conductor:
    """Calls ``perform`` once per step, when the timing source says, with items produced ahead on another thread.

    timing: a timing source (``TempoGrid``, ``sync.MidiClockSync``), or the grid spacing in seconds
        for a ``TempoGrid`` on ``clock``.
    produce(k): computes step k's item (runs on the producer thread, in order k = 0, 1, ...).
    prepare(k, item) -> payload: runs on the sender thread before step k is due.
    perform(k, payload, t): runs on the sender thread when step k is due; t is the clock reading.
    on_pause(): the music paused (a DAW's Stop): silence what sounds (sender thread).
    lookahead: how many items the producer may be ahead of the sender. 0: no producer thread;
        each item is produced on the sender thread just before its step (an offline run on a
        virtual clock, where the producer may move time forward to when it would listen).
    lead: call ``perform`` this long before each step is due, with the deadline as ``t`` (a port that
        places messages in time itself); 0: when it is due, with the clock reading.
    """

    def __init__(self, timing: TimingSource | float, produce: Callable[[int], Any],
                 prepare: Callable[[int, Any], Any], perform: Callable[[int, Any, float], None],
                 clock: Clock | None = None, lookahead: int = 2, spin: float = SPIN_SECONDS,
                 on_late: Callable[[int], None] | None = None, on_pause: Callable[[], None] | None = None,
                 lead: float = 0.0):
        self.clock = clock or getattr(timing, "clock", None) or MonotonicClock()
        self.timing = TempoGrid(timing, self.clock, spin) if isinstance(timing, (int, float)) else timing
        self.produce, self.prepare, self.perform = produce, prepare, perform
        self.spin = spin
        self.lead = lead
        self.on_late = on_late or _log_late
        self.on_pause = on_pause or (lambda: None)
        self.stats = ConductorStats()
        self.next_step = 0  # the next step the sender will play (sender only)
        self.inline = lookahead == 0
        self._items: queue.Queue = queue.Queue(maxsize=max(1, lookahead))  # producer -> sender
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self._producer_error: BaseException | None = None  # written by the producer before it ends

    # ---- control, from any thread ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return as soon as possible (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def set_step_seconds(self, step_seconds: float) -> bool:
        """Change tempo (any thread); False if the timing source follows someone else's tempo."""
        return self.timing.set_step_seconds(step_seconds)

    def deadline(self, k: int) -> float:
        """When step ``k`` is (or was) due (valid once ``run`` has started)."""
        return self.timing.deadline(k)

    def wait_until(self, deadline: float, spin: float | None = None) -> bool:
        """Sleep until ``deadline`` on the conductor's clock (spinning the last ``spin`` seconds, default the
        conductor's; 0: sleep only); False if stopped meanwhile."""
        return wait_until(self.clock, deadline, self._stop, self.spin if spin is None else spin)

    # ---- the sender ----------------------------------------------------------------------------

    def run(self, n_steps: int | None = None, start: float | None = None) -> ConductorStats:
        """Play steps until ``n_steps`` have passed (None: until ``stop()``). Returns the stats.

        start: when the first step is due on an internal grid (default: START_DELAY from now,
            so the producer can fill its queue first). Calling ``run`` again continues the
            grid where it left off.
        """
        self.timing.begin(start if start is not None else self.clock.now() + START_DELAY, self.next_step)
        if not self.inline:
            self._start_producer()
        end = None if n_steps is None else self.next_step + n_steps
        # A virtual clock never sleeps: keep it a normal thread. A port that places messages in time (a lead)
        # needs them ``lead`` early, not on the dot: there the sender runs below JACK's own threads, which
        # place them (at JACK's priority, and spinning, it took their CPU: at 32 frames, xruns and onsets
        # tens of ms off).
        real = isinstance(self.clock, MonotonicClock)
        priority = LEAD_PRIORITY if self.lead else SENDER_PRIORITY
        with realtime_priority(priority) if real else contextlib.nullcontext():
            self._send_loop(end)
        if self._producer_error is not None:
            raise self._producer_error
        return self.stats

    def _send_loop(self, end: int | None) -> None:
        timing = self.timing
        while not self._stop.is_set() and (end is None or self.next_step < end):
            k = self.next_step
            kind, due = timing.slot(k, self._stop)
            if kind is Slot.STOPPED:
                break
            if kind is Slot.PAUSED:
                self.on_pause()
                continue
            if kind is Slot.BEHIND:
                self._skip(k)
                continue
            item = self.produce(k) if self.inline else self._take(k, due - self.spin - self.lead)
            if item is PRODUCER_ENDED:
                break
            if item is None:  # the producer is late: skip this step, keep the grid
                self._skip(k)
                continue
            payload = self.prepare(k, item)
            t = timing.wait(k, self._stop, self.lead)
            if t is not None:
                handed = self.clock.now() if self.lead else t
                self.perform(k, payload, t)
                self.stats.played += 1
                # How late the step was handed over: at its deadline, or ``lead`` before it.
                self.stats.max_send_delay = max(self.stats.max_send_delay, handed - (timing.deadline(k) - self.lead))
                self.stats.steps += 1
            self.next_step = k + 1  # a step interrupted by a stop or pause is dropped, not played late

    def _skip(self, k: int) -> None:
        self.stats.late_steps += 1
        self.stats.late_indices.append(k)
        self.on_late(k)
        self.stats.steps += 1
        self.next_step = k + 1

    def close(self) -> None:
        """Stop the producer thread (call once, after the last ``run``)."""
        self._stop.set()
        if self._producer is not None:
            while self._producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    self._items.get_nowait()
                except queue.Empty:
                    pass
                self._producer.join(timeout=0.01)

    def _take(self, k: int, ready_by: float) -> Any:
        """Item k from the producer, or None if it is not there by ``ready_by``; drops stale items.

        Returns PRODUCER_ENDED if the producer has ended or ``stop()`` was called meanwhile.
        """
        budget = ready_by - self.clock.now()  # also counted down by hand: a virtual clock stands still here
        while True:
            timeout = min(budget, ready_by - self.clock.now())
            wait = min(timeout, MAX_SLEEP)  # in slices, so that stop() is noticed even at a slow tempo
            try:
                got = self._items.get(timeout=wait) if wait > 0 else self._items.get_nowait()
            except queue.Empty:
                if self._stop.is_set():
                    return PRODUCER_ENDED
                budget -= wait
                if timeout > MAX_SLEEP:
                    continue
                return None
            if got is PRODUCER_ENDED:
                return PRODUCER_ENDED
            index, item = got
            if index == k:
                return item
            # index < k: the item of a step already skipped; drop it and look again

    # ---- the producer --------------------------------------------------------------------------

    def _start_producer(self) -> None:
        if self._producer is None:
            self._producer = threading.Thread(target=self._produce_loop, name="improviser-producer", daemon=True)
            self._producer.start()

    def _produce_loop(self) -> None:
        k = self.next_step
        try:
            while not self._stop.is_set():
                item = self.produce(k)
                while not self._stop.is_set():  # a bounded put that still notices stop()
                    try:
                        self._items.put((k, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                k += 1
        except BaseException as e:  # hand the failure to the sender, which raises it
            self._producer_error = e
            self._stop.set()
            try:
                self._items.put_nowait(PRODUCER_ENDED)
            except queue.Full:
                pass


@contextlib.contextmanager
def realtime_priority(priority: int = 10):
    """Run the calling thread under SCHED_FIFO where the system allows it (Linux, with rtprio rights).

    A loaded machine can otherwise wake the sender several milliseconds late.
    Best effort: without the right (the usual case for a desktop user outside
    the ``audio`` group) nothing changes. The previous policy is restored after.
    """
    try:
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # pid 0: this thread only
    except (AttributeError, OSError):  # not Linux, or not allowed
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, old[0], old[1])


def _log_late(k: int) -> None:
    log.warning("step %d skipped: the model was not ready in time", k)
