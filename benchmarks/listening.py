"""Listening on a real JACK server: reaction latency to a heard note, and how closely it follows a MIDI clock.

    python benchmarks/listening.py [SECONDS] [--bpm 120] [--checkpoint P] [--jitter-ms 0.3] [--drop-every 100]

Starts its own JACK server (dummy driver, 48 kHz, -p 32, synchronous as in the
tests), a player port and a monitor port in this process, and runs the
improviser's ``LiveEngine`` with its listening part in a child process twice, SECONDS each:

- **reaction**: accompany mode on the internal clock; this process plays a note
  at random moments (about 4 a second). For each note: the time from its send
  (and from its arrival at the improviser) to the deadline of the step whose
  input first included it. A step hears what arrived up to half a step before
  its deadline, so the ideal is between half a step and one and a half.
- **clock**: ``--sync clock``; this process sends Start and then a 24 ppqn clock
  at --bpm, each tick jittered by up to ±``--jitter-ms`` and one tick in
  ``--drop-every`` left out (lost ticks must not shift the grid). For every
  note-on: its arrival at the monitor less the send time of the clock tick of
  its 16th (the DAW's grid), and the same at the improviser's send.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time

import numpy as np

from improviser.testing import PERIOD, RATE, JackUnavailable, jack_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", nargs="?", type=float, default=30.0)
    ap.add_argument("--bpm", type=float, default=120.0)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--jitter-ms", type=float, default=0.3)
    ap.add_argument("--drop-every", type=int, default=100)
    ap.add_argument("--child", choices=["reaction", "clock"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--port", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with jack_server("improviser-listen"):
        ports = []
        try:
            import mido

            backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
            received: list[tuple[float, list[int]]] = []
            # The callback only timestamps and appends: it runs on JACK's thread.
            ports.append(backend.open_input("monitor", client_name="lbench",
                                            callback=lambda m: received.append((time.monotonic(), m.bytes()))))
            player = backend.open_output("out", client_name="lkeys")
            ports.append(player)
            reaction = run_reaction(args, player, mido)
            received.clear()
            clock = run_clock(args, player, mido, received)
            report(args, reaction, clock)
        finally:
            for p in ports:
                p.close()  # before the server goes, or rtmidi crashes at exit


def start_child(args, kind: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, str(args.seconds), "--bpm", str(args.bpm), "--child", kind,
           "--input", "lkeys", "--port", "lbench:monitor"] + (["--checkpoint", args.checkpoint]
                                                             if args.checkpoint else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def run_reaction(args, player, mido) -> dict:
    proc = start_child(args, "reaction")
    rng = random.Random(0)
    sent = []
    end = time.monotonic() + args.seconds - 0.5
    time.sleep(0.3)
    while time.monotonic() < end:
        note = rng.randrange(55, 80)
        t = time.monotonic()
        player.send(mido.Message("note_on", note=note, velocity=80))
        sent.append(t)
        time.sleep(0.08)
        player.send(mido.Message("note_off", note=note))
        time.sleep(rng.uniform(0.05, 0.3))
    out = json.loads(proc.stdout.read())
    proc.wait()
    arrivals = np.array([r[0] for r in out["reactions"]])
    deadlines = np.array([r[1] for r in out["reactions"]])
    n = min(len(sent), len(arrivals))
    return {"step": out["step"], "from_arrival": (deadlines - arrivals) * 1e3,
            "from_send": (deadlines[:n] - np.array(sent[:n])) * 1e3, "notes": len(sent), "heard": len(arrivals),
            "late": out["late"]}


def run_clock(args, player, mido, received) -> dict:
    proc = start_child(args, "clock")
    rng = random.Random(1)
    period = 60 / args.bpm / 24
    ticks: list[float] = []  # send time of song position 0, 1, 2, ... (None: dropped)
    time.sleep(0.3)
    for _ in range(24):  # a beat of clock before Start, as DAWs do
        t0 = time.monotonic()
        player.send(mido.Message("clock"))
        time.sleep(period - (time.monotonic() - t0))
    player.send(mido.Message("start"))
    start = time.monotonic() + period
    n = int((args.seconds - 1.5) / period)
    for i in range(n):
        due = start + i * period + rng.uniform(-args.jitter_ms, args.jitter_ms) / 1e3
        while (left := due - time.monotonic()) > 0.0015:
            time.sleep(left - 0.0015)
        while time.monotonic() < due:
            pass
        if args.drop_every and i % args.drop_every == args.drop_every - 1:
            ticks.append(start + i * period)  # lost on the way: its ideal time stands in for the grid
            continue
        player.send(mido.Message("clock"))
        ticks.append(time.monotonic())
    player.send(mido.Message("stop"))
    out = json.loads(proc.stdout.read())
    proc.wait()
    time.sleep(0.1)
    grid = np.array(ticks)
    arrive_err = []
    for t, data in list(received):
        if data[0] & 0xF0 == 0x90 and data[2] > 0:
            i = int(np.argmin(np.abs(grid - t)))
            arrive_err.append((t - grid[i], i % 6 == 0))
    send_err = [(t - grid[pos]) for _, pos, t in out["steps"] if pos < len(grid)]
    return {"arrive": np.array([e for e, _ in arrive_err]) * 1e3,
            "off_grid": sum(not on for _, on in arrive_err), "send": np.array(send_err) * 1e3,
            "lost": out["lost"], "late": out["late"], "dropped": n // args.drop_every if args.drop_every else 0}


def child(args) -> None:
    from improviser.live.engine import LiveEngine, realtime_process
    from improviser.live.listen import InputListener, Listening, start_listening
    from improviser.live.sync import ClockFollower, MidiClockSync
    from improviser.model.generator import StreamingGenerator
    from improviser.model.network import default_checkpoint, load_checkpoint
    from improviser.ports.midi import open_output

    model, _ = load_checkpoint(args.checkpoint or default_checkpoint())
    follower = ClockFollower() if args.child == "clock" else None
    listener = InputListener(on_clock=follower.handle if follower else None)
    start_listening(listener, "jack", args.input)
    port = open_output("jack", args.port)
    listening = Listening(listener, mode="accompany")
    engine = LiveEngine(StreamingGenerator(model, 0.9, 1, seed=1), args.bpm, port, listening=listening,
                        timing=MidiClockSync(follower) if follower else None)
    print("ready", flush=True)
    timer = threading.Timer(args.seconds, engine.stop)
    timer.start()
    with realtime_process():
        engine.run(None)
    timer.cancel()
    listener.close()
    port.close()
    c = engine.conductor
    out = {"step": engine.step_seconds, "late": c.stats.late_steps}
    if follower is None:
        out["reactions"] = [(t, c.deadline(k)) for t, k in listening.reactions]
    else:
        out["steps"] = list(engine.timing.steps_ticks)
        out["lost"] = follower.lost
    json.dump(out, sys.stdout)


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def report(args, r: dict, c: dict) -> None:
    step_ms = r["step"] * 1e3
    print(f"listening: {args.seconds:g} s per run at {args.bpm:g} bpm (step {step_ms:.1f} ms), "
          f"JACK dummy {RATE} Hz -p {PERIOD}, not real-time")
    print(f"reaction: {r['notes']} notes played, {r['heard']} heard; late steps {r['late']}")
    for label, key in (("heard note (arrival) -> its step's deadline", "from_arrival"),
                       ("played note (send) -> its step's deadline", "from_send")):
        a = r[key]
        print(f"  {label:46} p50 {pct(a, 50):6.1f}  p90 {pct(a, 90):6.1f}  max {a.max():6.1f} ms"
              f"  ({a.min() / step_ms:.2f}..{a.max() / step_ms:.2f} steps)")
    a, s = np.abs(c["arrive"]), np.abs(c["send"])
    print(f"clock follow: {len(a)} onsets, jitter ±{args.jitter_ms:g} ms, {c['dropped']} ticks dropped "
          f"({c['lost']} counted as lost), onsets off the 16th grid {c['off_grid']}, late steps {c['late']}")
    print(f"  |onset at monitor - DAW's 16th tick sent|   p50 {pct(a, 50):6.2f}  p90 {pct(a, 90):6.2f}  "
          f"p99 {pct(a, 99):6.2f}  max {a.max():6.2f} ms")
    print(f"  |improviser's send - DAW's 16th tick sent|  p50 {pct(s, 50):6.2f}  p90 {pct(s, 90):6.2f}  "
          f"p99 {pct(s, 99):6.2f}  max {s.max():6.2f} ms")


if __name__ == "__main__":
    try:
        main()
    except JackUnavailable as e:
        sys.exit(str(e))  # one line: jackd is missing or did not start
