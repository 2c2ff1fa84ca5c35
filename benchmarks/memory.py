"""Memory over a long run: ``improviser play`` at 300 bpm, a session file every second, a knob turned
1,000 times a second.

    python benchmarks/memory.py [SECONDS] [--session-seconds 1] [--knob-rate 1000]

Starts its own JACK server (dummy driver, synchronous, as the tests do) and runs ``improviser play
--api jack --input virtual --mode accompany --bpm 300`` as a subprocess; a JACK output in this process
sends CC 74 (temperature) with a changing value KNOB_RATE times a second into its input, and plays a
note now and then, so the listening part, the controls, the session cutting and the file writer all
work the whole time. The improviser's resident memory (VmRSS in /proc/PID/status, its two processes
added: the real-time side and the worker) is read every second. Prints RSS at 30 s and at the end, the
growth between them (MiB and MiB per minute), the sessions written (its "wrote" lines) against the files
in the folder, and what it said when stopped.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from pathlib import Path

import mido

from improviser.testing import Run, input_port, jack_server, tree_rss_mb


def knob(port_name: str, rate: float, stop: threading.Event, sent: dict) -> None:
    """Turn CC 74 ``rate`` times a second (and strike a note every half second) into ``port_name``."""
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    out = backend.open_output("knob", client_name="memknob")
    try:
        import subprocess

        subprocess.run(["jack_connect", "memknob:knob", port_name], check=True, timeout=30)
        t0 = time.monotonic()
        k = 0
        while not stop.is_set():
            due = t0 + k / rate
            while time.monotonic() < due:
                time.sleep(0.0005)
            out.send(mido.Message("control_change", control=74, value=(k * 7) % 128))
            if k % int(rate / 2) == 0:
                note = 60 + (k // int(rate / 2)) % 12
                out.send(mido.Message("note_on", note=note, velocity=80))
                out.send(mido.Message("note_off", note=note))
                sent["notes"] += 1
            sent["controls"] += 1
            k += 1
    finally:
        out.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", nargs="?", type=float, default=150.0)
    ap.add_argument("--session-seconds", type=float, default=1.0)
    ap.add_argument("--knob-rate", type=float, default=1000.0)
    args = ap.parse_args()
    with jack_server("improviser-memory"), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sessions"
        run = Run("play", "--api", "jack", "--input", "virtual", "--mode", "accompany", "--bpm", "300",
                  "--session-seconds", str(args.session_seconds), "--sessions", str(folder))
        run.wait_for("playing into")
        stop = threading.Event()
        sent = {"controls": 0, "notes": 0}
        turner = threading.Thread(target=knob, args=(input_port(), args.knob_rate, stop, sent), daemon=True)
        turner.start()
        t0 = time.monotonic()
        samples = []
        while (elapsed := time.monotonic() - t0) < args.seconds:
            samples.append((elapsed, sum(tree_rss_mb(run.proc.pid, "VmRSS"))))
            time.sleep(1.0)
        stop.set()
        turner.join(10)
        run.proc.send_signal(signal.SIGINT)
        err = run.finish(timeout=60)
        written = sum(1 for line in err.splitlines() if line.startswith("wrote "))
        files = sorted(folder.glob("session-*.mid"))
    at30 = next(r for t, r in samples if t >= min(30.0, args.seconds / 5))
    end = samples[-1][1]
    minutes = (samples[-1][0] - 30.0) / 60
    print(f"memory: play --mode accompany at 300 bpm for {samples[-1][0]:.0f} s, a session every "
          f"{args.session_seconds:g} s, CC 74 turned {sent['controls'] / samples[-1][0]:.0f} times/s "
          f"({sent['controls']} in all) and {sent['notes']} notes heard")
    print(f"resident memory: {samples[0][1]:.1f} MiB at start, {at30:.1f} MiB at 30 s, {end:.1f} MiB at the end; "
          f"growth after 30 s {end - at30:+.2f} MiB ({(end - at30) / max(minutes, 1e-9):+.3f} MiB/min)")
    print(f"sessions: {written} 'wrote' lines, {len(files)} files in the folder")
    print("improviser: " + " | ".join(err.strip().splitlines()[-2:]))


if __name__ == "__main__":
    main()
