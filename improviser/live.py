"""Playing live: checkpoint -> StreamingGenerator -> Conductor -> sinks (MIDI port + session recorder).

``LiveEngine`` plays one generator at tempo. The conductor's producer thread
asks the generator for the next frame ahead of time; on the sending thread each
frame becomes MIDI messages (against what actually sounds, so a skipped step
never leaves a note on), which go to the port and, with the same send time, to
the recorder. Every ``session_seconds`` the recorder starts a new session and
the finished one is written by a background thread, so a file write never
delays a note.

Every way out of ``run`` (its end, ``stop()`` from Ctrl-C or SIGTERM, an
exception) takes the same path: a note-off for every sounding note, CC 123,
a short wait so the port delivers them, then the last (partial) session.

``record`` and ``play`` are the two services the CLI offers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import mido
import numpy as np

from .clock import Clock, Conductor, ConductorStats, MonotonicClock, VirtualClock
from .encoding import N_MIDI, Frame
from .generator import StreamingGenerator
from .ports import OutputPort
from .recorder import Session, SessionRecorder, session_path

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # s; how long another Python thread may hold the GIL while the sender waits for it


def frame_messages(sounding: np.ndarray, frame: Frame, channel: int = 0) -> list[mido.Message]:
    """The messages that turn ``sounding`` (bool (128,), what sounds now) into ``frame``.

    Note-offs first (notes that stop, or are struck again), then note-ons (struck
    notes, and any note the frame holds that does not sound, e.g. after a skipped step).
    """
    off = sounding & (~frame.sound | frame.onset)
    on = frame.onset | (frame.sound & ~sounding)
    msgs = [mido.Message("note_off", channel=channel, note=int(p), velocity=0) for p in np.flatnonzero(off)]
    msgs += [mido.Message("note_on", channel=channel, note=int(p), velocity=int(frame.velocity))
             for p in np.flatnonzero(on)]
    return msgs


@dataclass
class LiveResult:
    """What a live run did."""

    stats: ConductorStats
    sessions: list[Session] = field(default_factory=list)  # in order; the last one may be partial
    paths: list[Path] = field(default_factory=list)  # files written, in order
    interrupted: bool = False  # stopped before its planned end

    @property
    def n_notes(self) -> int:
        return sum(len(s.notes()) for s in self.sessions)


class LiveEngine:
    """Plays a StreamingGenerator at ``bpm`` into ``port`` (None: no port) and records what it sends.

    session_seconds: cut a new session every this many seconds (rounded to whole
        steps); None: one session for the whole run.
    on_session(session): called (on a background thread) with each finished
        session except the last, which ``run`` returns.
    warn(text): where warnings go (late steps); default: the logging module.
    """

    def __init__(self, generator: StreamingGenerator, bpm: float, port: OutputPort | None = None,
                 clock: Clock | None = None, session_seconds: float | None = None,
                 on_session: Callable[[Session], None] | None = None,
                 warn: Callable[[str], None] | None = None, channel: int = 0):
        self.generator = generator
        self.bpm = float(bpm)
        self.port = port
        self.clock = clock or MonotonicClock()
        self.channel = channel
        self.warn = warn or log.warning
        self.step_seconds = 60.0 / self.bpm / generator.cfg.steps_per_beat
        self.steps_per_session = (None if session_seconds is None
                                  else max(1, round(session_seconds / self.step_seconds)))
        self.on_session = on_session
        self.conductor = Conductor(self.step_seconds, self._produce, self._prepare, self._perform,
                                   clock=self.clock, on_late=self._late)
        self.recorder: SessionRecorder | None = None
        self._sounding = np.zeros(N_MIDI, bool)  # what the improviser's notes sound at the port now
        self._writer: _SessionWriter | None = None

    def stop(self) -> None:
        """End ``run`` soon and cleanly (from a signal handler or another thread)."""
        self.conductor.stop()

    def set_bpm(self, bpm: float) -> None:
        """Change tempo while playing: the next step keeps its time, the ones after it follow the new tempo.

        Sessions stay a whole number of steps long, and their files carry the starting tempo
        (note times in them are still the true ones).
        """
        self.step_seconds = 60.0 / float(bpm) / self.generator.cfg.steps_per_beat
        self.conductor.set_step_seconds(self.step_seconds)

    def run(self, seconds: float | None = None) -> LiveResult:
        """Play for ``seconds`` (None: until ``stop()``); returns the sessions, the last one partial if stopped.

        The run ends ``seconds`` after its first step, when the last notes are
        turned off; the last session file is exactly that long. One run per engine.
        """
        n_steps = None if seconds is None else max(1, math.ceil(seconds / self.step_seconds - 1e-9))
        result = LiveResult(self.conductor.stats)
        self._writer = _SessionWriter(self.on_session) if self.on_session else None
        one_blas_thread()
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)  # the producer and the file writer yield the GIL quickly
        try:
            start = self.clock.now() + 0.1
            self.recorder = SessionRecorder(start)
            self.conductor.run(n_steps, start=start)
            result.interrupted = self.conductor.stopped
            if not result.interrupted and seconds is not None:
                self.conductor.wait_until(start + seconds)  # let the last step sound to the end
                result.interrupted = self.conductor.stopped
        finally:
            sys.setswitchinterval(old_interval)
            self.conductor.close()
            last = self._silence()
            if self._writer is not None:
                result.sessions += self._writer.close()
            if last is not None:
                result.sessions.append(last)
        return result

    # ---- the three conductor callbacks ---------------------------------------------------------

    def _produce(self, k: int) -> Frame:
        return self.generator.step()  # producer thread, ahead of time

    def _prepare(self, k: int, frame: Frame) -> tuple[list[mido.Message], np.ndarray]:
        return frame_messages(self._sounding, frame, self.channel), frame.sound

    def _perform(self, k: int, payload: tuple[list[mido.Message], np.ndarray], t: float) -> None:
        msgs, sound = payload
        if self.port is not None:
            for msg in msgs:  # first, the deadline is now; the bookkeeping waits
                self.port.send(msg)
        self._sounding = sound
        if self.steps_per_session and k > 0 and k % self.steps_per_session == 0:
            # Step k opens a new session: cut at its deadline, before recording its messages.
            session = self.recorder.split(self.conductor.deadline(k))
            if self._writer is not None:
                self._writer.put(session)
        for msg in msgs:
            self.recorder.record(msg, t)

    def _late(self, k: int) -> None:
        n = self.conductor.stats.late_steps
        if n <= 10 or n % 100 == 0:
            self.warn(f"step {k} skipped: the model was not ready in time ({n} late so far)")

    # ---- the stop path -------------------------------------------------------------------------

    def _silence(self) -> Session | None:
        """Turn off every sounding note (and CC 123) and close the last session at this moment."""
        if self.recorder is None:
            return None
        t = self.clock.now()
        if self.port is not None:
            offs = self.port.silence()
        else:
            offs = frame_messages(self._sounding, Frame.silent(), self.channel)
        self._sounding = np.zeros(N_MIDI, bool)
        for msg in offs:
            self.recorder.record(msg, t)
        return self.recorder.finish(t)


class _SessionWriter:
    """Hands finished sessions to ``write`` on its own thread, in order."""

    def __init__(self, write: Callable[[Session], None]):
        self.write = write
        self.done: list[Session] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="improviser-writer", daemon=True)
        self._thread.start()

    def put(self, session: Session) -> None:
        self._queue.put(session)

    def close(self) -> list[Session]:
        """Wait for every session handed in so far to be written; returns them. Raises a write error."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.done

    def _loop(self) -> None:
        while (session := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.write(session)
                self.done.append(session)
            except BaseException as e:  # reported by close(); the music goes on meanwhile
                self.error = e


# ---- the two services ----------------------------------------------------------------------------

def record(generator: StreamingGenerator, out: str | Path, seconds: float, bpm: float,
           port: OutputPort | None = None, clock: Clock | None = None,
           warn: Callable[[str], None] | None = None,
           engine_class: Callable[..., LiveEngine] = LiveEngine) -> LiveResult:
    """Play ``seconds`` live into ``port`` and save what was sent to ``out``.

    Without a port it runs on a virtual clock, i.e. as fast as the model goes,
    and writes the same kind of file. If stopped early, the partial session is
    saved. The file's notes are timed as they were sent.
    """
    if port is None and clock is None:
        clock = VirtualClock()
    engine = engine_class(generator, bpm, port, clock=clock, warn=warn)  # e.g. a ListeningEngine (partial)
    with stop_on_signals(engine.stop):
        result = engine.run(seconds)
    session = result.sessions[-1]
    result.paths.append(session.write(out, bpm))
    return result


def play(generator: StreamingGenerator, sessions_dir: str | Path, session_seconds: float, bpm: float,
         port: OutputPort, clock: Clock | None = None, warn: Callable[[str], None] | None = None,
         on_written: Callable[[Path, Session], None] | None = None,
         engine_class: Callable[..., LiveEngine] = LiveEngine) -> LiveResult:
    """The service: play until Ctrl-C or SIGTERM, writing each session back to back into ``sessions_dir``.

    The hidden state carries on from session to session; the partial last
    session is written on stop. Files are named by their local start time.
    A session that cannot be written (disk full, folder gone) is kept in memory
    and retried (see ``SessionSaver``); the music goes on meanwhile.
    """
    from .saver import SessionSaver

    folder = Path(sessions_dir)
    folder.mkdir(parents=True, exist_ok=True)
    clock = clock or MonotonicClock()

    # Wall-clock time of the sessions' starts, from one reading of both clocks, so names always sort in order.
    wall0, clock0 = datetime.now(), clock.now()

    def path_for(session: Session) -> Path:
        return session_path(folder, session.index, wall0 + timedelta(seconds=session.start - clock0))

    saver = SessionSaver(folder, bpm, path_for, on_written=on_written, warn=warn)
    engine = engine_class(generator, bpm, port, clock=clock, session_seconds=session_seconds,
                          on_session=saver.save, warn=warn)
    try:
        with stop_on_signals(engine.stop):
            result = engine.run(None)
    except BaseException:
        saver.close(raise_errors=False)  # keep what can be kept; the first error is the one to report
        raise
    last = result.sessions[-1]
    if last.length > 0:
        saver.save(last)
    else:  # stopped right at a boundary: the new session had not begun
        result.sessions.pop()
    result.paths = saver.close()
    return result


def one_blas_thread() -> bool:
    """Make OpenBLAS (numpy's matrix library on Linux wheels) use one thread. True if it was found.

    After every call its worker threads spin for a long while waiting for more
    work; for one small matrix-vector product per step that burns half a core
    and competes with the sender. Best effort: other BLAS builds are left alone.
    """
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:  # not Linux
        return False
    found = False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # The symbol's name depends on how OpenBLAS was built (numpy's wheels rename it).
        for symbol in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                       "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"):
            set_threads = getattr(lib, symbol, None)
            if set_threads is not None:
                set_threads(1)
                found = True
                break
    return found


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]):
    """Within the block, Ctrl-C (SIGINT) and SIGTERM call ``stop`` (a clean stop); a second one interrupts hard."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
