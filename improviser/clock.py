"""The conductor: decides *when* each step is played. No MIDI, no model; time is injected.

One step per grid tick. Step ``k`` is due at ``t0 + k * step_seconds`` on a
monotonic clock, computed afresh for every step (never chained sleeps), so
small errors never add up into drift. The sender sleeps until ~1 ms before a
deadline and then spins on the clock for the rest, because a sleep alone wakes
up a variable fraction of a millisecond late.

Two threads share the work:

- the *producer* calls ``produce(k)`` (the model: ~0.3 ms) ahead of time and
  puts the result in a small bounded queue; it blocks only when it is
  ``lookahead`` steps ahead;
- the *sender* (the thread that calls ``run``) takes item ``k`` from the queue,
  calls ``prepare(k, item)`` (turn it into messages, well before the deadline),
  waits for the deadline and calls ``perform(k, payload, t)`` (send them).
  On the real clock it asks for SCHED_FIFO where allowed, so a busy machine
  does not wake it late.

The sender never waits on the model beyond a deadline. If item ``k`` is not
ready ``spin`` seconds before its deadline, step ``k`` is **skipped**: nothing
is sent for it (the notes already sounding simply go on), it is counted in
``stats.late_steps`` and logged, and the item is dropped when it arrives. The
grid is never shifted: step ``k + 1`` is still due at ``t0 + (k + 1) * step``.
Skipping rather than playing late keeps every played note on the grid; it is
safe because ``prepare`` works from what actually sounds, not from the skipped
frame.

A tempo change re-anchors ``t0`` at the next step, so that step keeps its
deadline and only the spacing after it changes: no jump, no burst.
"""

from __future__ import annotations

import contextlib
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
MAX_SLEEP = 0.05  # sleep in slices no longer than this, so stop() is noticed quickly
START_DELAY = 0.1  # the first step is due this long after run(): time for the producer to get ahead


class Clock(Protocol):
    """Where the conductor reads time and sleeps. ``now`` is monotonic seconds."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` (the same clock in every process, so tests can compare)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """A clock that only moves when asked: ``sleep`` jumps ahead at once (offline runs, tests).

    tick: how far each ``now()`` call advances time, so a spin on this clock ends.
    overshoot: called with the requested sleep, returns extra seconds the sleep
        takes (to imitate a real sleep waking late).
    """

    def __init__(self, start: float = 0.0, tick: float = 1e-6,
                 overshoot: Callable[[float], float] | None = None):
        self.t = start
        self.tick = tick
        self.overshoot = overshoot
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            self.t += self.tick
            return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds) + (self.overshoot(seconds) if self.overshoot else 0.0))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


@dataclass
class ConductorStats:
    """What happened while playing; times in seconds."""

    steps: int = 0  # steps whose deadline has passed (played or skipped)
    played: int = 0
    late_steps: int = 0  # skipped because the producer was not ready
    late_indices: list[int] = field(default_factory=list)
    max_send_delay: float = 0.0  # worst (perform time - deadline) over played steps


_STOP = object()  # queue sentinel: the producer has ended


class Conductor:
    """Calls ``perform`` once per step, on the grid, with items produced ahead on another thread.

    step_seconds: the grid spacing (60 / bpm / steps_per_beat).
    produce(k): computes step k's item (runs on the producer thread, in order k = 0, 1, ...).
    prepare(k, item) -> payload: runs on the sender thread before step k's deadline.
    perform(k, payload, t): runs on the sender thread at step k's deadline; t is the clock reading.
    lookahead: how many items the producer may be ahead of the sender.
    """

    def __init__(self, step_seconds: float, produce: Callable[[int], Any],
                 prepare: Callable[[int, Any], Any], perform: Callable[[int, Any, float], None],
                 clock: Clock | None = None, lookahead: int = 2, spin: float = SPIN_SECONDS,
                 on_late: Callable[[int], None] | None = None):
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        self.clock = clock or MonotonicClock()
        self.produce, self.prepare, self.perform = produce, prepare, perform
        self.spin = spin
        self.on_late = on_late or _log_late
        self.stats = ConductorStats()
        self.step_seconds = step_seconds
        self.t0: float | None = None  # deadline of step 0, set when run() starts
        self.next_step = 0  # the next step the sender will play
        self._pending_step_seconds: float | None = None
        self._items: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self._producer_error: BaseException | None = None

    # ---- control, from any thread ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return as soon as possible (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def set_step_seconds(self, step_seconds: float) -> None:
        """Change tempo; applied by the sender before the next step, which keeps its deadline."""
        if step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        self._pending_step_seconds = step_seconds

    def deadline(self, k: int) -> float:
        """When step ``k`` is due (valid once ``run`` has started)."""
        assert self.t0 is not None, "the conductor has not started"
        return self.t0 + k * self.step_seconds

    # ---- the sender ----------------------------------------------------------------------------

    def run(self, n_steps: int | None = None, start: float | None = None) -> ConductorStats:
        """Play steps until ``n_steps`` have passed (None: until ``stop()``). Returns the stats.

        start: deadline of the first step (default: START_DELAY from now, so the
            producer can fill its queue first). Calling ``run`` again continues
            the grid where it left off.
        """
        if self.t0 is None:
            first = start if start is not None else self.clock.now() + START_DELAY
            self.t0 = first - self.next_step * self.step_seconds
        self._start_producer()
        end = None if n_steps is None else self.next_step + n_steps
        real = isinstance(self.clock, MonotonicClock)  # a virtual clock never sleeps: keep it a normal thread
        with realtime_priority() if real else contextlib.nullcontext():
            self._send_loop(end)
        if self._producer_error is not None:
            raise self._producer_error
        return self.stats

    def _send_loop(self, end: int | None) -> None:
        while not self._stop.is_set() and (end is None or self.next_step < end):
            self._apply_tempo_change()
            k = self.next_step
            deadline = self.deadline(k)
            item = self._take(k, deadline - self.spin)
            if item is _STOP:
                break
            if item is None:  # the producer is late: skip this step, keep the grid
                self.stats.late_steps += 1
                self.stats.late_indices.append(k)
                self.on_late(k)
            else:
                payload = self.prepare(k, item)
                if not self.wait_until(deadline):
                    break
                t = self.clock.now()
                self.perform(k, payload, t)
                self.stats.played += 1
                self.stats.max_send_delay = max(self.stats.max_send_delay, t - deadline)
            self.stats.steps += 1
            self.next_step = k + 1

    def wait_until(self, deadline: float) -> bool:
        """Sleep until about ``spin`` before ``deadline``, then spin. False if stopped meanwhile."""
        clock = self.clock
        while True:
            left = deadline - clock.now()
            if left <= self.spin:
                break
            if self._stop.is_set():
                return False
            clock.sleep(min(left - self.spin, MAX_SLEEP))
        while clock.now() < deadline:  # the last ~millisecond: spin, a sleep would wake up late
            pass
        return True

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

        Returns _STOP if the producer has ended or ``stop()`` was called meanwhile.
        """
        budget = ready_by - self.clock.now()  # also counted down by hand: a virtual clock stands still here
        while True:
            timeout = min(budget, ready_by - self.clock.now())
            wait = min(timeout, MAX_SLEEP)  # in slices, so that stop() is noticed even at a slow tempo
            try:
                got = self._items.get(timeout=wait) if wait > 0 else self._items.get_nowait()
            except queue.Empty:
                if self._stop.is_set():
                    return _STOP
                budget -= wait
                if timeout > MAX_SLEEP:
                    continue
                return None
            if got is _STOP:
                return _STOP
            index, item = got
            if index == k:
                return item
            # index < k: the item of a step already skipped; drop it and look again

    def _apply_tempo_change(self) -> None:
        new = self._pending_step_seconds
        if new is None:
            return
        self._pending_step_seconds = None
        k = self.next_step
        due = self.deadline(k)
        self.step_seconds = new
        self.t0 = due - k * new  # step k keeps its deadline; the spacing after it changes

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
                self._items.put_nowait(_STOP)
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
