"""Soak: ``improviser play --mode accompany`` at 300 bpm for SECONDS with ~1,000 junk messages a second on its input.

    python benchmarks/soak.py [SECONDS] [--seed 11]

Starts its own JACK server (dummy driver, 48 kHz, -p 32, synchronous, not real-time, as in the tests), a
monitor port in this process, and runs the same soak as ``tests/test_soak.py`` (``improviser.testing.soak``):
``improviser play`` as a subprocess writing a session file every 10 s, a flood process connected to its
``improviser:in`` sending random notes on all channels, controllers (none of the live controls), pitch bend,
sysex, clock, aftertouch and active sensing; SIGTERM at the end. Prints:

- onset error p50/p99/max: every onset in the session files (the improviser's send times) against the
  300 bpm 16th grid;
- drift: the mean onset error of the first and the last 200 onsets in the files, and the monitor's lag
  (arrival less file time) over the first and the last 200 notes: the files' clock against this one;
- late steps (from the improviser's last stderr line), messages flooded, notes played (in the files),
  heard (at the monitor), the flood's note-ons sent and recorded on the player track;
- the peak resident memory (VmHWM in /proc/PID/status, read just before SIGTERM) of the improviser's two
  processes: the real-time side (the process started) and the worker (its child).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from improviser.testing import PERIOD, RATE, JackUnavailable, Monitor, first_difference, jack_server, soak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", nargs="?", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with jack_server("improviser-soak"):
        monitor = Monitor()
        try:
            with tempfile.TemporaryDirectory() as folder:
                r = soak(monitor, Path(folder) / "sessions", args.seconds, args.seed)
                report(r)
        finally:
            monitor.close()  # before the server goes, or rtmidi crashes at exit


def report(r: dict) -> None:
    resid = r["resid"] * 1e3
    a = np.abs(resid)
    n = min(200, len(resid) // 2)
    lags = (r["lags"] - np.median(r["lags"])) * 1e3
    m = min(200, len(lags) // 2)
    sent = r["sent"]
    print(f"soak: {r['elapsed']:.0f} s of play --mode accompany at {r['bpm']:g} bpm, a session every "
          f"{r['session_seconds']:g} s; JACK dummy {RATE} Hz -p {PERIOD}, not real-time")
    print(f"process: up throughout {r['up']}, exit code {r['code']}, {len(r['files'])} session files, "
          f"peak RSS {r['rss_mb'][0]:.0f} MiB (the real-time side) + {r['rss_mb'][1]:.0f} MiB (the worker)")
    print(f"onset error (files vs the 16th grid, {len(resid)} onsets): p50 {np.percentile(a, 50):.2f}  "
          f"p99 {np.percentile(a, 99):.2f}  max {a.max():.2f} ms; late steps {r['late']}")
    print(f"drift: onset error first {n} {resid[:n].mean():+.3f} ms, last {n} {resid[-n:].mean():+.3f} ms; "
          f"monitor lag first {m} {np.median(lags[:m]):+.2f} ms, last {m} {np.median(lags[-m:]):+.2f} ms "
          f"(median-relative; lag spread p50 {np.median(np.abs(lags)):.2f}, p99 "
          f"{np.percentile(np.abs(lags), 99):.2f} ms)")
    rate = sent["messages"] / sent["seconds"]
    print(f"flood: {sent['messages']} messages in {sent['seconds']:.1f} s ({rate:.0f}/s): "
          f"{sent['note_ons']} note-ons, {sent['note_offs']} note-offs, {sent['controls']} CCs, "
          f"{sent['pitchwheel']} pitch bends, {sent['sysex']} sysex, {sent['clock']} clock, "
          f"{sent['aftertouch']} aftertouch, {sent['active_sensing']} active sensing")
    same = [h[0] for h in r["heard"]] == [s[0] for s in r["saved"]]
    print(f"notes: played {len(r['saved'])} (in the files, joined at the seams), heard {len(r['heard'])} at the "
          f"monitor, same pitches in the same order {same}; flood note-ons recorded on the player track "
          f"{r['recorded']} ({r['at_seams']} struck again at a seam) of {sent['note_ons']} sent")
    if not same:
        print("  " + first_difference(r["heard"], r["saved"]))
    print("improviser: " + " | ".join(line for line in r["err"].strip().splitlines()[-2:]))


if __name__ == "__main__":
    try:
        main()
    except JackUnavailable as e:
        sys.exit(str(e))  # one line: jackd is missing or did not start
