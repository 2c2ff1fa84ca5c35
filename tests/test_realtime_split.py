"""The two processes of playing live: the real-time side owns silence when the worker dies or stalls (on JACK,
with each message on its frame and with python-rtmidi's backend, which serves ALSA and CoreMIDI alike).

The improviser runs as a user runs it (``python -m improviser record ...``); the process it starts is the
real-time side, its one child the worker (the model). The monitor is a JACK input in this process that
timestamps every message on arrival.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from test_live_jack import assert_same_notes

from improviser.testing import assert_all_notes_off_sent_last, file_notes, finish, improviser, monitor_notes, wait_for

pytestmark = pytest.mark.jack


def worker_of(pid: int) -> int:
    """The pid of the child process of ``pid`` that runs ``improviser worker``, once it is there. (Not just its one
    child: loading a library can run a short-lived helper, ``ldconfig`` for ctypes, which would be taken for the
    worker and be gone by the time it is signalled -- seen in a full run: ProcessLookupError on SIGSTOP.)"""
    found: list[int] = []

    def is_worker(child: int) -> bool:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"improviser" in argv and b"worker" in argv

    def child() -> bool:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        kids = [int(p) for p in path.read_text().split()] if path.exists() else []
        found[:] = [c for c in kids if is_worker(c)]
        return len(found) == 1

    wait_for(child, 20, "the worker process")
    return found[0]


def playing(monitor, out: Path, backend: str):
    """``record`` into ``monitor`` for a minute, once it plays and a note sounds: (its process, the worker's pid)."""
    proc = improviser("record", str(out), "--seconds", "60", "--bpm", "150", "--seed", "2", "--stability", "4",
                      "--api", "jack", "--jack-backend", backend, "--output", monitor.client)
    try:
        worker = worker_of(proc.pid)
        wait_for(lambda: len(monitor.messages("note_on")) >= 12, 40, "the improviser to play")
        wait_for(lambda: sounding_now(monitor), 10, "a sounding note")
    except BaseException:
        proc.kill()
        raise
    return proc, worker


def sounding_now(monitor) -> bool:
    last = {}
    for _, m in monitor.messages("note_on", "note_off"):
        last[m.channel, m.note] = m.type == "note_on" and m.velocity > 0
    return any(last.values())


BACKENDS = pytest.mark.parametrize("backend", ["jack", "rtmidi"])  # each message on its frame; rtmidi's


@BACKENDS
def test_the_worker_killed_mid_play_silences_the_port_within_100_ms_and_the_file_keeps_what_was_played(
        monitor, tmp_path, backend):
    out = tmp_path / "take.mid"
    proc, worker = playing(monitor, out, backend)
    try:
        killed = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        code, _, err = finish(proc, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1, err
    lines = [line for line in err.splitlines() if "worker" in line]
    assert len(lines) == 1 and re.match(r"error: the worker process was killed by SIGKILL after [\d.]+ s; every "
                                        rf"sounding note was turned off; wrote {re.escape(str(out))} ", lines[0]), err
    time.sleep(0.05)
    heard = monitor_notes(monitor)  # fails if a note was left on
    assert_all_notes_off_sent_last(monitor)
    after = [t - killed for t, _ in monitor.messages()]
    assert max(after) < 0.1, f"the last message came {max(after) * 1e3:.0f} ms after the kill"
    saved, length, _ = file_notes(out)
    assert 1.0 < length < 60
    assert_same_notes(heard, saved)  # every note played up to the kill is in the file, as it was heard


def test_a_stalled_worker_is_silenced_and_plays_on_when_it_comes_back(monitor, tmp_path, backend="jack"):
    out = tmp_path / "take.mid"
    proc, worker = playing(monitor, out, backend)
    try:
        os.kill(worker, signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(0.5)
        assert not sounding_now(monitor), "a note still sounds half a second into the stall"
        silenced = max(t for t, _ in monitor.messages("note_off", "control_change"))
        ons = len(monitor.messages("note_on"))
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: len(monitor.messages("note_on")) >= ons + 8, 20, "the improviser to play on")
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    # Silenced STALL_SECONDS (0.1 s) after the step it owed: a step (0.1 s at 150 bpm) and 0.1 s at most.
    assert silenced - stopped < 0.2 + 0.02, f"silenced {(silenced - stopped) * 1e3:.0f} ms into the stall"
    assert err.count("late with its next step") == 1, err
    time.sleep(0.05)
    monitor_notes(monitor)  # nothing left hanging
    assert_all_notes_off_sent_last(monitor)


def test_the_real_time_side_killed_takes_the_worker_with_it(monitor, tmp_path):
    proc = improviser("record", str(tmp_path / "x.mid"), "--seconds", "60", "--api", "jack", "--output",
                      monitor.client)
    try:
        worker = worker_of(proc.pid)
        wait_for(lambda: len(monitor.messages("note_on")) >= 4, 40, "the improviser to play")
        proc.kill()
        proc.wait(10)

        def gone() -> bool:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z"  # a zombie until reaped

        wait_for(gone, 5, "the worker to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "the real-time process that holds the MIDI ports is gone" in proc.stderr.read()
