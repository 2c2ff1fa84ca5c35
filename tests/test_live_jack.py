"""End to end on a real JACK server: what reaches a MIDI monitor equals what the session files hold,
and no way of stopping leaves a note hanging.

The improviser runs as a user would run it (``python -m improviser ...`` in a
subprocess); the monitor is a virtual JACK input in this process that
timestamps every message on arrival.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from improviser.testing import assert_all_notes_off_sent_last, file_notes, finish, improviser, monitor_notes, wait_for

pytestmark = pytest.mark.jack

TYPICAL = 0.003  # s: a file's ticks (~1 ms at 120 bpm) plus JACK's period (0.67 ms) plus scheduling
WORST = 0.03  # s: a fifth of a step at 150 bpm; a note played a step early or late is far outside


def assert_same_notes(heard: list, saved: list) -> None:
    """The same notes in the same order, and the file's timing is the timing heard.

    Arrival at the monitor lags the send by a JACK period or so, and by more when
    a loaded machine delays JACK's (not real-time) threads; so the typical error
    must be within a few ms, and every note within a fraction of a step.
    """
    assert heard, "nothing reached the monitor"
    assert [n[0] for n in heard] == [n[0] for n in saved], "pitches or order differ"
    lags = np.array([[on - start, off - end] for (_, on, off), (_, start, end) in zip(heard, saved)])
    err = np.abs(lags - np.median(lags[:, 0]))  # the offset between the clocks: the median lag
    assert np.median(err) < TYPICAL, f"typical timing error {np.median(err) * 1e3:.1f} ms"
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() < WORST, (f"pitch {heard[worst[0]][0]}: its {('start', 'end')[worst[1]]} is "
                               f"{err.max() * 1e3:.1f} ms off the file's")


def test_record_plays_into_a_port_exactly_what_it_saves(monitor, tmp_path):
    out = tmp_path / "take.mid"
    code, _, err = finish(improviser("record", str(out), "--seconds", "3", "--bpm", "120", "--seed", "5",
                                     "--api", "jack", "--output", monitor.client))
    assert code == 0, err
    assert "a real-time process writes each message on its own frame" in err, err
    assert re.search(r"; \d+ JACK xruns$", err.strip()), err  # counted and said in the summary
    time.sleep(0.05)
    saved, length, names = file_notes(out)
    assert length == pytest.approx(3.0, abs=0.01)
    assert names[1:] == ["improviser", "player"]
    assert len(saved) >= 5
    assert_same_notes(monitor_notes(monitor), saved)
    assert_all_notes_off_sent_last(monitor)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_phrase_leaves_no_note_hanging_and_keeps_the_partial_take(monitor, tmp_path, sig):
    out = tmp_path / "partial.mid"
    proc = improviser("record", str(out), "--seconds", "60", "--bpm", "150", "--seed", "2", "--stability", "4",
                      "--api", "jack", "--output", monitor.client)
    try:
        wait_for(lambda: len(monitor.messages("note_on")) >= 12, 30, "the improviser to play")

        def mid_phrase():  # some note is sounding right now
            on = {m.note for _, m in monitor.messages("note_on")}
            last = {}
            for _, m in monitor.messages("note_on", "note_off"):
                last[m.note] = m.type == "note_on" and m.velocity > 0
            return on and any(last.values())

        wait_for(mid_phrase, 10, "a sounding note")
        proc.send_signal(sig)
        code, _, err = finish(proc, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    time.sleep(0.05)
    heard = monitor_notes(monitor)  # fails if a note was left on
    assert_all_notes_off_sent_last(monitor)
    saved, length, _ = file_notes(out)
    assert 0.5 < length < 30
    assert_same_notes(heard, saved)


def test_play_writes_sessions_back_to_back_with_nothing_lost_at_the_seams(monitor, tmp_path):
    folder = tmp_path / "sessions"
    proc = improviser("play", "--sessions", str(folder), "--session-seconds", "2", "--bpm", "120",
                      "--seed", "9", "--stability", "3", "--api", "jack", "--output", monitor.client)
    try:
        wait_for(lambda: len(list(folder.glob("*.mid"))) >= 3, 40, "three session files")
        time.sleep(0.7)  # into the fourth session
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    time.sleep(0.05)
    files = sorted(folder.glob("*.mid"))
    assert len(files) == 4, [f.name for f in files]
    # Lay the sessions end to end. A note held over a seam is closed there and struck again at 0
    # in the next file, which a file cannot tell from a note struck again on the seam step; so
    # cut what the monitor heard at the seams the same way and compare note for note.
    saved: list[tuple] = []
    seams: list[float] = []
    offset = 0.0
    for i, f in enumerate(files):
        notes, length, _ = file_notes(f)
        if i < len(files) - 1:
            assert length == pytest.approx(2.0, abs=0.002), f"{f.name} is {length:.3f} s long"
        else:
            assert 0.3 < length < 2.0  # the partial last session
        saved += [(p, start + offset, end + offset) for p, start, end in notes]
        offset += length
        seams.append(offset)
    saved.sort(key=lambda n: (n[1], n[0]))
    heard = monitor_notes(monitor)
    t0 = heard[0][1] - saved[0][1]  # the monitor's clock time of the files' time 0
    cut = []
    for p, on, off in heard:
        for seam in seams[:-1]:
            if on < t0 + seam - WORST and off > t0 + seam + WORST:  # held over this seam
                cut.append((p, on, t0 + seam))
                on = t0 + seam
        cut.append((p, on, off))
    # Order both by step, then pitch: notes of one step arrive microseconds apart, and a cut
    # note's start is the computed seam time rather than an arrival time.
    step = 60 / 120 / 4
    saved.sort(key=lambda n: (round(n[1] / step), n[0]))
    assert_same_notes(sorted(cut, key=lambda n: (round((n[1] - t0) / step), n[0])), saved)
    assert_all_notes_off_sent_last(monitor)


def test_record_opens_a_virtual_port_that_ports_lists(monitor, tmp_path):
    # Long enough to still be playing after the port is found and `improviser ports` has run
    # (each a fresh Python process: seconds on a loaded machine).
    proc = improviser("record", str(tmp_path / "v.mid"), "--seconds", "15", "--bpm", "160", "--api", "jack")
    try:
        def improviser_port():
            lsp = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=dict(os.environ)).stdout
            return next((line.strip() for line in lsp.splitlines() if line.startswith("improviser")), None)

        def port_or_exit():
            if proc.poll() is not None:
                pytest.fail(f"improviser exited before its port was seen: {proc.stderr.read()[-800:]}")
            return improviser_port()

        wait_for(port_or_exit, 60, "the improviser's virtual port")  # a loaded CI machine imports torch slowly
        listed = subprocess.run([sys.executable, "-m", "improviser", "ports", "--api", "jack"],
                                capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        inputs = listed.stdout.split("MIDI inputs")[1]
        outputs = listed.stdout.split("MIDI inputs")[0]
        assert improviser_port() in inputs and monitor.name in outputs
        subprocess.run(["jack_connect", improviser_port(), monitor.name], check=True)
        code, _, err = finish(proc, 40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    time.sleep(0.05)
    assert len(monitor_notes(monitor)) > 3  # heard through the virtual port; none left hanging


def test_an_unknown_port_name_is_one_line_listing_the_ports(monitor, tmp_path):
    code, _, err = finish(improviser("record", str(tmp_path / "x.mid"), "--api", "jack",
                                     "--output", "no-such-synth"))
    assert code == 1
    assert err.strip().count("\n") == 0 and "no-such-synth" in err and monitor.name in err
    assert not (tmp_path / "x.mid").exists()
