"""Following a DAW's MIDI clock: 24 ticks per quarter note, start / stop / continue / song position.

``ClockFollower`` is fed by the input thread (``handle(kind, msg, t)``, t on the
monotonic clock). Steps are placed by *counting* ticks: a 16th note is 6 ticks,
so step boundaries are the song positions 0, 6, 12, ... after Start (the first
tick after Start is position 0). Time only serves to send a step *on* its tick
rather than after it arrives: the tick period is the median of the recent
intervals, and the grid's phase the median of (arrival - period * index) over
the same ticks, both robust to a jittery tick. A lost tick shows as a gap of
about two periods and is counted as two, so the grid does not slip.

``MidiClockSync`` is the conductor's timing source for it (the internal one is
``clock.TempoGrid``): nothing before Start; each step is sent at its tick's
predicted time or when the tick arrives, whichever is first; on Stop the
conductor's ``on_pause`` silences every note and the sender waits for Start or
Continue. The producer still runs ahead (the model is ready before the tick).
Every wait goes through the injected clock, so a virtual clock with the DAW's
ticks scheduled on it (``VirtualClock.at``) runs a whole session in milliseconds.

The tempo is the DAW's: a tempo control (CC) is ignored under MIDI clock
(``set_step_seconds`` returns False; the CLI says so once at start).

Shared state: the follower's fields are written by the input thread and read by
the sender, always under ``changed`` (a condition on a re-entrant lock).
"""

from __future__ import annotations

import collections
import statistics
import threading
from typing import Any

from .clock import SPIN_SECONDS, Clock, MonotonicClock, Slot

TICKS_PER_BEAT = 24
TICKS_PER_STEP = 6  # a 16th note
WINDOW = 12  # ticks (half a beat) for the period and phase: a tempo change is followed within a beat
LOST_TICK = 1.75  # an interval this many periods long means ticks were lost on the way...
TAKE_BACK = 0.6  # ...unless the next tick follows within this many periods: then one was only late


class ClockFollower:
    """Counts MIDI clock ticks into song positions and predicts when a tick will arrive."""

    def __init__(self, window: int = WINDOW):
        self.running = False
        self.count = 0  # ticks received (plus lost ones), whether running or not
        self.offset = 0  # song position of tick number c is c - offset
        self.position = 0  # song position of the next tick
        self.ticks: collections.deque = collections.deque(maxlen=window + 1)  # (tick number, arrival time)
        self.epoch = 0  # bumped by each start / stop / continue, so a waiting sender notices
        self.changed = threading.Condition()
        self.lost = 0  # ticks inferred from gaps
        self._guessed = 0  # ticks counted as lost after the last gap, which may yet be taken back
        self._jump_at = 0  # the tick number given to the tick after that gap
        self.window = window
        self._just_started = False  # Start/Continue came: the next tick is counted as one, no gap guessing

    def handle(self, kind: str, msg: Any, t: float) -> None:
        """Input thread: one clock/start/stop/continue/songpos message, arrived at ``t``."""
        with self.changed:
            if kind == "clock":
                self._tick(t)
            elif kind == "start":
                self._forget_stale(t)
                self.position, self.running = 0, True
                self._just_started = True  # the next tick is position 0, whatever the gap before it
                self.offset = self.count  # the next tick is position 0
                self.epoch += 1
            elif kind == "continue":
                self._forget_stale(t)
                self.running = True
                self._just_started = True
                self.offset = self.count - self.position
                self.epoch += 1
            elif kind == "stop":
                self.running = False
                self.epoch += 1
            elif kind == "songpos" and not self.running:
                self.position = msg.pos * TICKS_PER_STEP  # song position is counted in 16ths
            self.changed.notify_all()

    def _forget_stale(self, t: float) -> None:
        """Ticks from before a pause in the clock say nothing about the phase after it."""
        p = self.period()
        # With one tick only, no period yet: a gap longer than a tick at 20 bpm (0.125 s) is a pause.
        if self.ticks and t - self.ticks[-1][1] > (4 * p if p else 0.5):
            self.ticks.clear()

    def _tick(self, t: float) -> None:
        self._forget_stale(t)  # the DAW stopped sending clock for a while: start the estimate afresh
        n = 1
        if self.ticks and not self._just_started:
            period = self.period()
            gap = t - self.ticks[-1][1]
            if period and gap > LOST_TICK * period:
                n = min(round(gap / period), TICKS_PER_BEAT)  # lost ticks: count them, keep the grid
                self.lost += n - 1
            elif period and self._guessed and gap < TAKE_BACK * period:
                # The ticks before came late (a stall delivered them together), not after lost ones: this
                # one follows too closely. Take one guessed tick back, so a delay does not shift the grid.
                self.ticks = collections.deque(((c - 1 if c >= self._jump_at else c), tt) for c, tt in self.ticks)
                self.ticks = collections.deque(self.ticks, maxlen=self.window + 1)
                self.count -= 1
                self.lost -= 1
                self._guessed -= 1
                self._jump_at -= 1
                n = 0  # counted below as the tick after the last one kept
        self._just_started = False
        if n > 1:
            self._guessed, self._jump_at = n - 1, self.count + n - 1
        elif n == 1:
            self._guessed = 0
        n = max(n, 1)
        self.count += n - 1
        self.ticks.append((self.count, t))
        self.count += 1
        if self.running:
            self.position = self.count - self.offset

    def period(self) -> float | None:
        """Seconds per tick: the median of recent intervals (None before two ticks)."""
        with self.changed:  # the input thread changes the ticks; read them whole (the lock is reentrant)
            pts = list(self.ticks)
        if len(pts) < 2:
            return None
        return statistics.median((b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(pts, pts[1:]))

    def bpm(self) -> float | None:
        p = self.period()
        return None if not p else 60.0 / (p * TICKS_PER_BEAT)

    def arrived(self, position: int) -> bool:
        """Has the tick at song ``position`` surely arrived (in the current run)?

        A tick counted after a gap may yet be taken back: it is not trusted until the next one.
        """
        return self.running and self.position - self._guessed > position

    def time_of(self, position: int) -> float | None:
        """Predicted arrival of the tick at song ``position`` (None: not enough ticks yet)."""
        with self.changed:  # a consistent snapshot: the input thread may be adding a tick right now
            p = self.period()
            n = position + self.offset  # its tick number
            pts = list(self.ticks)
        if p is None or not pts or n > pts[-1][0] + TICKS_PER_STEP + 2:
            return None  # too far beyond the last tick heard: wait for ticks rather than guess
        phase = statistics.median(t - p * c for c, t in pts)
        return phase + p * n


class MidiClockSync:
    """A timing source whose steps are the 16ths of an incoming MIDI clock (see the module docstring).

    follower: the ClockFollower fed by the input. clock: the injected clock (its ``wait`` sleeps).
    """

    def __init__(self, follower: ClockFollower, clock: Clock | None = None, spin: float = SPIN_SECONDS):
        self.follower = follower
        self.clock = clock or MonotonicClock()
        self.spin = spin
        # Sender only:
        self.target = 0  # song position of the next step
        self.epoch: int | None = None  # the follower's epoch the sender is playing in
        self._paused = False  # PAUSED was said for the current stop; wait for the DAW now
        self.sent_at: dict[int, float] = {}  # step -> when it was due (the last few steps)
        self.steps_ticks: collections.deque = collections.deque(maxlen=10_000)  # (step, song position, sent)

    def begin(self, first: float, next_step: int) -> None:
        pass  # the DAW's Start begins the music

    def set_step_seconds(self, step_seconds: float) -> bool:
        return False  # the DAW sets the tempo

    def deadline(self, k: int) -> float:
        return self.sent_at.get(k, self.clock.now())

    def slot(self, k: int, stop: threading.Event) -> tuple[Slot, float]:
        f = self.follower
        with f.changed:
            if not f.running or f.epoch != self.epoch:
                if self.epoch is not None and not self._paused:
                    self._paused = True
                    return Slot.PAUSED, 0.0  # stopped or restarted: every note off first, then wait here
                while not f.running and not stop.is_set():
                    self.clock.wait(f.changed, 0.05)
                if stop.is_set():
                    return Slot.STOPPED, 0.0
                self._paused = False
                self.epoch = f.epoch
                self.target = _next_boundary(f.position)
            if f.position > self.target + TICKS_PER_STEP // 2:  # more than half a step behind the DAW
                self.target = _next_boundary(f.position)
                return Slot.BEHIND, 0.0
            due = f.time_of(self.target)
        return Slot.PLAY, (due if due is not None else self.clock.now() + 1.0)

    def wait(self, k: int, stop: threading.Event, lead: float = 0.0) -> float | None:
        """Until the step's tick arrives or is due (less ``lead``), whichever is first.

        Returns when the step sounds (the tick's predicted time, or the clock if that has passed or the
        tick came first), or None if stopped meanwhile.
        """
        f, clock, position = self.follower, self.clock, self.target
        self.target += TICKS_PER_STEP  # whatever happens, the next step is the next 16th
        spin = 0.0 if lead else self.spin  # a port that places messages in time needs no spin
        due = None
        while True:
            with f.changed:
                if stop.is_set() or f.epoch != self.epoch or not f.running:
                    return None
                if f.arrived(position):
                    due = None
                    break
                due = f.time_of(position)
                left = None if due is None else due - lead - clock.now()
                if left is None or left > spin:
                    # Woken by every tick; the timeout ends the sleep ~spin before the predicted time.
                    clock.wait(f.changed, 0.05 if left is None else min(left - spin, 0.05))
                    continue
            while clock.now() < due - lead:  # the last ~millisecond: spin
                pass
            break
        t = clock.now() if due is None else max(due, clock.now())
        self.sent_at[k] = t
        self.sent_at.pop(k - 8, None)
        self.steps_ticks.append((k, position, t))
        return t


def _next_boundary(position: int) -> int:
    """The first 16th-note boundary (a multiple of 6 ticks) at or after ``position``."""
    return -(-position // TICKS_PER_STEP) * TICKS_PER_STEP
