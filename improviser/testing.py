"""The JACK rig the tests and the benchmarks measure the improviser on: a real JACK server, ports that
listen and flood, the improviser as a user runs it, and the readings of what came out.

There is no ALSA sequencer on the machines this project is tested on, so real MIDI between real ports
goes through JACK (Debian package ``jackd2``), with the dummy driver::

    with jack_server("improviser-bench") as name:   # JACK_DEFAULT_SERVER is ``name`` meanwhile
        monitor = Monitor()                          # a JACK input that timestamps what arrives
        run = Run("record", "take.mid", "--api", "jack", "--output", monitor.client)
        print(run.finish())                          # its stderr; AssertionError if it did not exit 0
        notes = monitor_notes(monitor)               # (pitch, on, off), no note left hanging
        monitor.close()                              # every port before the server goes

- ``jack_server`` starts a uniquely named ``jackd -S -d dummy`` and raises ``JackUnavailable`` (one line
  that says what to do) when jackd is missing or does not start; the tests' fixture (tests/conftest.py)
  skips on it locally and fails in CI, a benchmark prints it and exits.
- ``Monitor``, ``improviser``, ``Run``, ``finish``, ``wait_for``: ports and processes; ``Stage``: a JACK client
  that plays a performance with each message on its frame and keeps what comes back with its frame.
- ``monitor_notes``, ``file_notes``, ``assert_all_notes_off_sent_last``, ``grid_residuals``: what was
  played, what was saved, how far off the grid.
- ``flood``/``start_flood``: a process flooding a JACK port with junk; ``soak``: ``improviser play`` under
  a flood for a while (tests/test_soak.py for a minute, benchmarks/soak.py for longer).

This module has no pytest in it: a failed check is an ``AssertionError`` (or ``TimeoutError``), which
pytest reports as a failure and a benchmark as a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import mido
import numpy as np

RATE = 48000  # Hz
PERIOD = 32  # frames: 0.67 ms at 48 kHz
START_SECONDS = 20.0  # how long jackd may take to answer (a loaded machine is slow to start it)

SOAK_BPM = 300.0
SOAK_SESSION_SECONDS = 10.0
FLOOD_RATE = 1000  # messages a second
# Controllers a flood sends: none of the live controls (temperature 74, stability 71, tempo 76, panic 119),
# which would rightly change the music or silence it, and none of the channel mode messages (120-127).
FLOOD_CCS = [1, 2, 7, 10, 11, 64, 65, 91, 93]


# ---- files -------------------------------------------------------------------------------------

def mangled(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    """``data`` cut to ``cut`` bytes with the byte at each position of ``flips`` set to its value (positions
    beyond the cut are ignored): a damaged file for the fuzz tests."""
    out = bytearray(data[:cut])
    for pos, value in flips:
        if pos < len(out):
            out[pos] = value
    return bytes(out)


# ---- the server ----------------------------------------------------------------------------------

class JackUnavailable(RuntimeError):
    """jackd is not installed or did not start; the message says what to do."""


def _jack_answers(env: dict) -> bool:
    """jack_lsp reaches the server and lists its ``system:`` ports: clients can connect now."""
    try:
        probe = subprocess.run(["jack_lsp"], env=dict(env, JACK_NO_START_SERVER="1"), capture_output=True,
                               text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0 and "system:" in probe.stdout


@contextlib.contextmanager
def jack_server(prefix: str, realtime: bool = False, period: int = PERIOD, rate: int = RATE,
                log: str | os.PathLike | None = None) -> Iterator[str]:
    """Start ``jackd`` (dummy driver) named ``prefix-<random>``, make it this process's and its children's
    ``JACK_DEFAULT_SERVER`` until the block ends, and yield its name.

    ``realtime``: ``-R`` (real-time scheduling, needs rtprio rights) instead of ``--no-realtime``. ``log``:
    a file for jackd's output (default: /dev/null). Close every port opened on it before the block ends,
    or rtmidi crashes at exit. Raises ``JackUnavailable`` if jackd is missing or does not start.
    """
    missing = [tool for tool in ("jackd", "jack_lsp") if shutil.which(tool) is None]
    if missing:
        raise JackUnavailable(f"{' and '.join(missing)} not found: install JACK "
                              "(Debian/Ubuntu: apt-get install jackd2)")
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name)
    # -S (synchronous): each cycle waits for every client. In JACK2's default asynchronous mode a client that
    # is a little late (no real-time priority, a busy CPU) gets its MIDI buffer read half-written, and
    # messages arrive garbled or lost.
    cmd = ["jackd", "-n", name, "-R" if realtime else "--no-realtime", "-S", "-d", "dummy", "-r", str(rate),
           "-p", str(period)]
    # Its output goes to a file, never to a pipe nobody reads: under load jackd logs every xrun, and a full
    # pipe blocks the server, which then hangs every client that talks to it.
    with open(log if log is not None else os.devnull, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_SECONDS
            while not _jack_answers(env):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise JackUnavailable(_did_not_start(cmd, server, log))
                time.sleep(0.1)
            old = os.environ.get("JACK_DEFAULT_SERVER")
            os.environ["JACK_DEFAULT_SERVER"] = name
            try:
                yield name
            finally:
                if old is None:
                    os.environ.pop("JACK_DEFAULT_SERVER", None)
                else:
                    os.environ["JACK_DEFAULT_SERVER"] = old
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def realtime_jack_server(prefix: str, period: int = PERIOD, rate: int = RATE,
                         log: str | os.PathLike | None = None) -> Iterator[tuple[str, bool]]:
    """``jack_server`` real-time (-R) where real-time rights allow it, else one that is not; yields its name
    and whether it is real-time."""
    with contextlib.ExitStack() as stack:
        try:
            name, realtime = stack.enter_context(jack_server(prefix, True, period, rate, log)), True
        except JackUnavailable:  # no rtprio rights
            name, realtime = stack.enter_context(jack_server(prefix, False, period, rate, log)), False
        yield name, realtime


def _did_not_start(cmd: list[str], server: subprocess.Popen, log) -> str:
    code = server.poll()
    how = f"exited with code {code}" if code is not None else f"did not answer jack_lsp within {START_SECONDS:g} s"
    said = "run it by hand to see why"
    if log is not None:
        with contextlib.suppress(OSError):
            said = " | ".join(Path(log).read_text().strip().splitlines())[-500:] or "it said nothing"
    return f"jackd did not start ({' '.join(cmd)} {how}): {said}"


# ---- ports and processes -------------------------------------------------------------------------

class Monitor:
    """A virtual JACK MIDI input that timestamps (time.monotonic) every message as it arrives.

    Its port name is ``<client>:<port>``; the improviser plays into it with ``--output <client>``.
    """

    def __init__(self, port: str = "monitor", client: str | None = None):
        self.client = client or f"mon{uuid.uuid4().hex[:6]}"
        self.name = f"{self.client}:{port}"
        self.received: list[tuple[float, mido.Message]] = []  # appended on JACK's thread, read by the caller
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        # The callback only timestamps and appends: it runs on JACK's thread.
        self._port = backend.open_input(port, client_name=self.client,
                                        callback=lambda msg: self.received.append((time.monotonic(), msg)))

    def messages(self, *types: str) -> list[tuple[float, mido.Message]]:
        """(arrival time, message) of every message so far, or of those of the given types."""
        return [(t, m) for t, m in list(self.received) if not types or m.type in types]

    def close(self) -> None:
        self._port.close()


def improviser(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``python -m improviser ARGS`` as a user runs it, stdout and stderr piped (text)."""
    return subprocess.Popen([sys.executable, "-m", "improviser", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env if env is not None else dict(os.environ),
                            **kwargs)


def torchrun_train(tmp_path, *args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``improviser train ARGS`` under torchrun with ``ranks`` processes on this machine, one thread each, its
    cache in ``tmp_path``: the finished process (output captured as text)."""
    import shutil

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "IMPROVISER_CACHE": str(Path(tmp_path) / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node", str(ranks), "-m", "improviser", "train",
                           *map(str, args)], env=env, capture_output=True, text=True, timeout=240)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    """Wait for ``proc`` to end; its exit code, stdout and stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until it is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Run:
    """``python -m improviser ARGS`` in a subprocess, its stderr read line by line as it comes (by a thread
    of this object), so a caller can wait for a line while it runs."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path | None = None):
        self.proc = improviser(*args, env=env, cwd=cwd)
        self.lines: list[str] = []  # appended by the reader thread, read by the caller
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        """Its stderr so far."""
        return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        """How many stderr lines so far match the regular expression ``pattern``."""
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def wait_for(self, pattern: str, n: int = 1, timeout: float = 60) -> None:
        """Wait until ``n`` stderr lines match ``pattern`` (a regular expression). If it exits first or the
        time runs out, kill it and raise AssertionError or TimeoutError with what it said."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) < n:
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self.count(pattern) >= n:
                    break
                raise AssertionError(f"the improviser exited (code {self.proc.returncode}) before {n} line(s) "
                                     f"matching {pattern!r}:\n{self.text()[-2000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError(f"no {n} line(s) matching {pattern!r} from the improviser within {timeout:g} s:"
                                   f"\n{self.text()[-2000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (if it still runs), wait for it (kill it after ``timeout`` s); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(5)
        return code

    def finish(self, timeout: float = 60) -> str:
        """Wait for it to end by itself (kill it after ``timeout`` s); its stderr. AssertionError unless it
        exited 0."""
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(5)
        err = self.text()
        if self.proc.returncode != 0:
            raise AssertionError(f"the improviser exited with code {self.proc.returncode}:\n{err[-2000:]}")
        return err


class Stage:
    """One JACK client: ``player`` writes scheduled messages each on its own frame, ``monitor`` keeps what arrives
    with its frame (both on JACK's frame clock); xruns counted."""

    def __init__(self):
        import jack

        self.client = jack.Client(f"stage{uuid.uuid4().hex[:6]}", no_start_server=True)
        self.player = self.client.midi_outports.register("player")
        self.monitor = self.client.midi_inports.register("monitor")
        self.schedule: list[tuple[int, bytes]] = []  # (frame, message), sorted; set before its frames come
        self._next = 0
        self.heard: list[tuple[int, bytes]] = []  # appended by the process callback
        self.late = 0
        self.xruns = 0
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(lambda usecs: setattr(self, "xruns", self.xruns + 1))
        self.client.activate()

    @property
    def name(self) -> str:
        return self.client.name

    def _process(self, frames: int) -> None:
        start = self.client.last_frame_time
        self.player.clear_buffer()
        while self._next < len(self.schedule) and self.schedule[self._next][0] < start + frames:
            frame, data = self.schedule[self._next]
            if frame < start:
                self.late += 1
            self.player.write_midi_event(max(0, frame - start), data)
            self._next += 1
        for offset, data in self.monitor.incoming_midi_events():
            self.heard.append((start + offset, bytes(data)))

    def play(self, played, start_frame: int, rate: int = RATE) -> None:
        """``played`` (``tempo.Note``s, times in seconds) from ``start_frame`` on, each message on its frame."""
        events = []
        for n in played:
            events.append((start_frame + round(n.onset * rate), bytes([0x90, n.pitch, n.velocity])))
            events.append((start_frame + round(n.off * rate), bytes([0x80, n.pitch, 0])))
        self._next = 0
        self.schedule = sorted(events)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def logged_grid(step_seconds: float, clock):
    """The internal grid (``clock.TempoGrid``) keeping each step's deadline in ``dues`` as the sender takes it:
    where a test or benchmark reads which step an onset was (``--bpm auto`` moves the grid)."""
    from .live.clock import TempoGrid

    class LoggedGrid(TempoGrid):
        def __init__(self, *args):
            super().__init__(*args)
            self.dues: dict[int, float] = {}

        def slot(self, k, stop):
            got = super().slot(k, stop)
            self.dues[k] = got[1]
            return got

    return LoggedGrid(step_seconds, clock)


def input_port() -> str:
    """The improviser's virtual input as JACK names it (``improviser:in``, or ``improviser-01:in`` ...);
    AssertionError unless there is exactly one."""
    lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=30).stdout.split("\n")
    found = [p.strip() for p in lsp if re.fullmatch(r"improviser[^:]*:in", p.strip())]
    if len(found) != 1:
        raise AssertionError(f"not one improviser input port among {lsp}")
    return found[0]


class MidiDump:
    """``jack_midi_dump -a`` (JACK's own example client, not ours) listening on ``<client>:input``: it prints
    every message with the frame it was written on, counted from its start, so it sees where in a period a
    message lands. The improviser plays into it with ``--output <client>``; ``stop()`` ends it and returns
    [(frame, bytes)] of everything it heard."""

    def __init__(self, client: str | None = None, timeout: float = 20):
        self.client = client or f"dump{uuid.uuid4().hex[:6]}"
        self.name = f"{self.client}:input"
        self._out = tempfile.TemporaryFile("w+")  # a file, never a pipe nobody reads while it runs
        self.proc = subprocess.Popen(["jack_midi_dump", "-a", self.client], stdout=self._out,
                                     stderr=subprocess.STDOUT)

        def listed() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jack_midi_dump exited with code {self.proc.returncode}")
            lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=30).stdout
            return self.name in lsp.split("\n")

        wait_for(listed, timeout, f"jack_midi_dump's port {self.name}")

    def stop(self) -> list[tuple[int, bytes]]:
        """End it (it prints what it still holds on the way out); (frame, bytes) of every message."""
        if self.proc.poll() is None:
            # SIGINT: it closes its JACK client and exits. SIGTERM kills it with the client open, and a
            # real-time server then waits a long timeout for it in the middle of a cycle (seen: 427 ms at
            # 1024 frames), after which it may misbehave for the clients that stay.
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._out.seek(0)
        events = []
        for line in self._out:
            frame, sep, rest = line.partition(":")
            if not sep or not frame.strip().isdigit():
                continue
            data = []
            for word in rest.split():
                if not re.fullmatch(r"[0-9a-f]{2}", word):
                    break
                data.append(int(word, 16))
            events.append((int(frame), bytes(data)))
        self._out.close()
        return events


def dump_notes(events: list[tuple[int, bytes]], rate: int = RATE) -> list[tuple[int, float, float]]:
    """(pitch, on, off) in seconds (frame / rate) of the notes in ``MidiDump.stop()``'s events, as
    ``monitor_notes`` gives them; AssertionError on a note-on never turned off."""
    notes, sounding = [], {}
    for frame, data in events:
        if len(data) != 3 or data[0] & 0xE0 != 0x80:  # note-on 0x9n and note-off 0x8n only
            continue
        key, t = (data[0] & 0x0F, data[1]), frame / rate
        if key in sounding:
            notes.append((data[1], sounding.pop(key), t))
        if data[0] & 0xF0 == 0x90 and data[2] > 0:
            sounding[key] = t
    if sounding:
        raise AssertionError(f"notes left hanging at jack_midi_dump: {sorted(sounding)}")
    return sorted(notes, key=lambda n: (n[1], n[0]))


# ---- what was played, what was saved --------------------------------------------------------------

def monitor_notes(monitor: Monitor) -> list[tuple[int, float, float]]:
    """(pitch, on, off) of every note the monitor heard, in order; AssertionError on a note-on never turned off."""
    notes, sounding = [], {}
    for t, msg in monitor.messages("note_on", "note_off"):
        key = (msg.channel, msg.note)
        if key in sounding:  # a note-off, or a re-strike without one (then the old note ends too)
            notes.append((msg.note, sounding.pop(key), t))
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = t
    if sounding:
        raise AssertionError(f"notes left hanging at the monitor: {sorted(sounding)}")
    return sorted(notes, key=lambda n: (n[1], n[0]))


def file_notes(path: Path, track: str = "improviser") -> tuple[list[tuple[int, float, float]], float, list[str]]:
    """(pitch, start, end) in seconds of one track, the file's length, and its track names."""
    mid = mido.MidiFile(path)
    tempo = next(m.tempo for m in mid.tracks[0] if m.type == "set_tempo")
    names = [next((m.name for m in tr if m.type == "track_name"), "") for tr in mid.tracks]
    notes, sounding, length = [], {}, 0.0
    for tr in mid.tracks:
        ticks = 0
        name = next((m.name for m in tr if m.type == "track_name"), "")
        for msg in tr:
            ticks += msg.time
            t = mido.tick2second(ticks, mid.ticks_per_beat, tempo)
            length = max(length, t)
            if name != track or msg.type not in ("note_on", "note_off"):
                continue
            if msg.note in sounding:
                notes.append((msg.note, sounding.pop(msg.note), t))
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[msg.note] = t
    if sounding:
        raise AssertionError(f"{path}: notes never turned off")
    return sorted(notes, key=lambda n: (n[1], n[0])), length, names


def assert_all_notes_off_sent_last(monitor: Monitor) -> None:
    """A CC 123 (all notes off) reached the monitor, after the last note message."""
    msgs = monitor.messages()
    cc123 = [i for i, (_, m) in enumerate(msgs) if m.type == "control_change" and m.control == 123]
    notes = [i for i, (_, m) in enumerate(msgs) if m.type in ("note_on", "note_off")]
    if not cc123:
        raise AssertionError("no CC 123 (all notes off) at the monitor")
    if notes and cc123[-1] < notes[-1]:
        raise AssertionError("CC 123 came before the last note message")


def grid_residuals(times: np.ndarray, step: float) -> np.ndarray:
    """How far each time is from a grid of ``step`` (its phase: the median), in seconds."""
    phase = (times - times[0]) / step
    resid = (phase - np.round(phase)) * step
    return resid - np.median(resid)


def first_difference(heard: list, saved: list) -> str:
    """Where two note lists first differ in pitch, with a few notes of context (for a failure message)."""
    i = next((k for k, (h, s) in enumerate(zip(heard, saved)) if h[0] != s[0]), min(len(heard), len(saved)))
    lag = heard[0][1] - saved[0][1] if heard and saved else 0.0

    def fmt(notes, shift):
        return [(p, round(on - shift, 3), round(off - shift, 3)) for p, on, off in notes]

    return (f"{len(heard)} heard, {len(saved)} saved; first difference at {i}:"
            f"\n heard {fmt(heard[max(0, i - 3):i + 4], lag)}\n saved {fmt(saved[max(0, i - 3):i + 4], 0)}")


# ---- flood and soak ------------------------------------------------------------------------------

def flood(client: str, seconds: float, seed: int = 0, rate: float = FLOOD_RATE) -> None:
    """Run in a process of its own (``start_flood``): open a JACK output ``client:out``, say "ready", wait
    for a line on stdin, then send ``rate`` random messages a second for ``seconds`` (paced by the clock, a
    few at a time): notes on all 16 channels (each turned off again later), controllers (``FLOOD_CCS``),
    pitch bend, sysex, clock, aftertouch and active sensing. Then turn off every note it left on and print
    JSON counts ("messages", "note_ons", ...)."""
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    port = backend.open_output("out", client_name=client)
    print("ready", flush=True)
    sys.stdin.readline()
    rng = random.Random(seed)
    held: set[tuple[int, int]] = set()
    counts = dict.fromkeys(["messages", "note_ons", "note_offs", "controls", "pitchwheel", "sysex", "clock",
                            "aftertouch", "active_sensing"], 0)
    t0 = time.monotonic()
    for n in range(int(seconds * rate)):
        if n % 4 == 0:  # four at a time, on the clock: ``rate`` a second however slow a send is
            while (left := t0 + n / rate - time.monotonic()) > 0:
                time.sleep(left)
        kind = rng.random()
        if kind < 0.4:
            ch, note = rng.randrange(16), rng.randrange(128)
            if (ch, note) in held:
                held.discard((ch, note))
                port.send(mido.Message("note_off", channel=ch, note=note))
                counts["note_offs"] += 1
            else:
                held.add((ch, note))
                port.send(mido.Message("note_on", channel=ch, note=note, velocity=rng.randrange(1, 128)))
                counts["note_ons"] += 1
        elif kind < 0.6:
            port.send(mido.Message("control_change", channel=rng.randrange(16), control=rng.choice(FLOOD_CCS),
                                   value=rng.randrange(128)))
            counts["controls"] += 1
        elif kind < 0.75:
            port.send(mido.Message("pitchwheel", channel=rng.randrange(16), pitch=rng.randrange(-8192, 8192)))
            counts["pitchwheel"] += 1
        elif kind < 0.85:
            port.send(mido.Message("sysex", data=[rng.randrange(128) for _ in range(rng.randrange(1, 40))]))
            counts["sysex"] += 1
        else:
            other = rng.choice(["clock", "clock", "aftertouch", "active_sensing"])
            port.send(mido.Message(other, channel=rng.randrange(16)) if other == "aftertouch"
                      else mido.Message(other))
            counts[other] += 1
        counts["messages"] += 1
    for ch, note in sorted(held):
        port.send(mido.Message("note_off", channel=ch, note=note))
        counts["note_offs"] += 1
        counts["messages"] += 1
    counts["seconds"] = time.monotonic() - t0
    time.sleep(0.1)
    port.close()
    print(json.dumps(counts), flush=True)


def start_flood(seconds: float, seed: int = 0, rate: float = FLOOD_RATE) -> tuple[subprocess.Popen, str]:
    """A ``flood`` process whose port ``<client>:out`` is open; it floods once a line is written to its stdin,
    and prints its counts (one JSON line) when done. Returns it and its client name."""
    client = f"flood{uuid.uuid4().hex[:6]}"
    code = f"from improviser.testing import flood; flood({client!r}, {seconds}, {seed}, {rate})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    said = proc.stdout.readline().strip()
    if said != "ready":
        proc.kill()
        raise AssertionError(f"the flood process did not open its port (it said {said!r})")
    return proc, client


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident set (VmHWM; VmRSS for the current one), in MiB; NaN once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    match = re.search(field + r":\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def children(pid: int) -> list[int]:
    """The pids of a process's children (on JACK, ``record`` and ``play``'s worker process)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_rss_mb(pid: int, field: str = "VmHWM") -> tuple[float, float]:
    """(the process's, its children's summed) resident memory in MiB, as ``peak_rss_mb`` reads it: the
    real-time side and the worker of a live command."""
    return peak_rss_mb(pid, field), sum(peak_rss_mb(c, field) for c in children(pid))


def cli(*args):
    """Run the CLI in this process (typer's CliRunner); returns the result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from .cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *words: str) -> str:
    """Check that a CLI result failed with one line on stderr, no traceback, holding ``words``; returns it."""
    err = result.stderr.strip()
    problems = []
    if result.exit_code == 0:
        problems.append("exit code 0")
    if len(err.splitlines()) != 1:
        problems.append(f"{len(err.splitlines())} lines on stderr")
    if "Traceback" in result.output:
        problems.append("a traceback")
    problems += [f"no {w!r}" for w in words if w not in err]
    if problems:
        raise AssertionError(f"{', '.join(problems)} in: {result.output}")
    return err


def join_sessions(files: list[Path], monitor_heard: list[tuple[int, float, float]], step: float):
    """The improviser's notes of all session files laid end to end, on one time line (file time), and their
    total length.

    A note held over a seam is closed at the seam and struck again at 0 in the next file, which a file
    cannot tell from a note struck again on the seam step. The monitor can: the note it heard that began
    with the piece before the seam ends at the seam if it was struck again there, and goes on if it was
    held. So such pieces are joined unless that monitor note ended within half a ``step`` of the seam. The
    monitor's clock is put on file time by the median lag over the first file's notes (it may deliver a
    message late, never early).
    """
    first = file_notes(files[0])[0]
    n = min(len(first), len(monitor_heard), 200)
    lag = float(np.median([h[1] - f[1] for h, f in zip(monitor_heard[:n], first[:n])])) if n else 0.0
    by_pitch: dict[int, list[tuple[float, float]]] = {}
    for p, on, off in monitor_heard:
        by_pitch.setdefault(p, []).append((on - lag, off - lag))
    notes: list[list] = []
    offset = 0.0
    tick = 0.002
    for i, f in enumerate(files):
        pieces, length, _ = file_notes(f)
        for p, start, end in pieces:
            if i and start < tick:
                before = [n for n in notes if n[0] == p and abs(n[2] - offset) < tick]
                if before:
                    heard = min(by_pitch.get(p, [(np.inf, np.inf)]), key=lambda h: abs(h[0] - before[0][1]))
                    if heard[1] > offset + step / 2:  # held over the seam: one note
                        before[0][2] = end + offset
                        continue
            notes.append([p, start + offset, end + offset])
        offset += length
    return sorted((tuple(n) for n in notes), key=lambda n: (n[1], n[0])), offset


def soak(monitor: Monitor, folder: Path, seconds: float, seed: int = 11, bpm: float = SOAK_BPM,
         session_seconds: float = SOAK_SESSION_SECONDS, rate: float = FLOOD_RATE) -> dict:
    """Run ``improviser play --mode accompany`` into ``monitor`` for ``seconds``, a session file every
    ``session_seconds`` in ``folder``, with a flood of ``rate`` messages a second on its input; SIGTERM;
    gather what happened (a dict: see the end)."""
    step = 60 / bpm / 4  # a 16th
    flooder, client = start_flood(max(seconds - 1.5, 1.0), seed, rate)
    try:
        run = Run("play", "--sessions", str(folder), "--session-seconds", str(session_seconds),
                  "--bpm", str(bpm), "--seed", str(seed), "--api", "jack", "--output", monitor.client,
                  "--input", "virtual", "--mode", "accompany")
        try:
            run.wait_for("playing into")
            subprocess.run(["jack_connect", f"{client}:out", input_port()], check=True, timeout=30)
            started = time.monotonic()
            flooder.stdin.write("go\n")
            flooder.stdin.flush()
            up = True
            while flooder.poll() is None and time.monotonic() < started + seconds + 60:
                up = up and run.proc.poll() is None
                time.sleep(0.5)
            sent = json.loads(flooder.stdout.readline())
            time.sleep(max(0.0, started + seconds - time.monotonic()))
            up = up and run.proc.poll() is None
            rss = tree_rss_mb(run.proc.pid)  # VmHWM only grows: the last reading is the peak
            elapsed = time.monotonic() - started
        finally:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        err = run.finish()
    finally:
        if flooder.poll() is None:
            flooder.kill()
    time.sleep(0.1)  # the last messages to the monitor
    files = sorted(folder.glob("*.mid"))
    heard = monitor_notes(monitor)  # fails on a note left hanging at the monitor
    saved, length = join_sessions(files, heard, step)
    lags = np.array([h[1] - s[1] for h, s in zip(heard, saved)])
    onsets = np.array(sorted({round(n[1], 6) for n in saved}))
    resid = grid_residuals(onsets, step) if len(onsets) else np.array([np.nan])
    recorded = at_seams = 0  # the flood's note-ons on the player track, over all files; those at a seam
    for i, f in enumerate(files):
        for tr in mido.MidiFile(f).tracks:
            if any(m.type == "track_name" and m.name == "player" for m in tr):
                ticks = 0
                for m in tr:
                    ticks += m.time
                    if m.type == "note_on" and m.velocity > 0:
                        recorded += 1
                        at_seams += bool(i and ticks == 0)
    late = re.search(r"(\d+) late", err.splitlines()[-1]) if err.strip() else None
    return {"err": err, "up": up, "code": run.proc.returncode, "elapsed": elapsed, "bpm": bpm,
            "session_seconds": session_seconds, "files": files, "lengths": [file_notes(f)[1] for f in files],
            "length": length, "heard": heard, "saved": saved, "lags": lags, "resid": resid, "onsets": onsets,
            "sent": sent, "recorded": recorded, "at_seams": at_seams,
            "late": int(late.group(1)) if late else None, "rss_mb": rss}


# ---- audio (the built-in synth) --------------------------------------------------------------------------

def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(frames x channels float samples, full scale = 1; sample rate) of a 16-bit WAV."""
    import wave

    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise AssertionError(f"{path}: {8 * w.getsampwidth()}-bit samples, not 16")
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return x.astype(float) / 32768, w.getframerate()


def dbfs(x: np.ndarray) -> float:
    """RMS level of samples (full scale = 1) in dB below full scale."""
    return 20 * float(np.log10(max(float(np.sqrt(np.mean(np.square(x)))), 1e-10)))


def attack_delays(x: np.ndarray, rate: int, times: list[float], level: float = 0.1) -> np.ndarray:
    """For isolated notes at ``times`` (s): how long after its time each one's attack is heard, in s -- the first
    sample, from 20 ms before the note to 100 ms after, that reaches ``level`` times the window's peak."""
    audio = np.abs(x.mean(axis=1)) if x.ndim == 2 else np.abs(x)
    delays = []
    for t in times:
        lo, hi = max(0, round((t - 0.02) * rate)), round((t + 0.1) * rate)
        window = audio[lo:hi]
        delays.append((lo + int(np.flatnonzero(window >= level * window.max())[0])) / rate - t)
    return np.array(delays)
