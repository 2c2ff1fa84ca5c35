"""Timing on a real JACK server: the two JACK backends side by side at a separate client, idle and under a
flood of input, or (``--naive``) the live engine beside a naive loop.

    python benchmarks/timing.py [SECONDS] [--bpm 140] [--periods 32 64 128 256 1024] [--loads idle flood]
    python benchmarks/timing.py [SECONDS] --naive [--bpm 120] [--checkpoint P] [--jack-realtime]

**Backends** (the default). For each period it starts a JACK server of its own (dummy driver, 48 kHz,
real-time if allowed), and for each load and backend (``--jack-backend jack``, the default: a real-time
process of its own writes each message on its frame; ``rtmidi``: python-rtmidi's in the one process,
everything at the start of the next period) runs ``improviser record --api jack --bpm 140 --seed 1`` for
SECONDS into ``jack_midi_dump -a``, JACK's own example client, which prints the frame every message was
written on. Load ``idle``: nothing on its input; ``flood``: ``--input virtual --mode accompany`` with a
process sending ~1,000 messages a second of every kind into it (notes on all channels, aftertouch, pitch
bend, controllers, sysex, clock: ``testing.flood``). Reported: onset jitter against the tempo grid (the
distinct note-on times in frames / 48 kHz, less the grid's phase: what a synth in the graph hears), the
onsets' lag behind the session file's times less its median, whether every note of the file arrived with
its note-off, the messages written after their time, the xruns the improviser counted, and its lead.

**Naive** (``--naive``). Starts its own JACK server (dummy driver, 48 kHz, -p 32: a 0.67 ms period) and
a monitor port in this process that timestamps every arriving message with time.monotonic(). Then it
runs, one after the other and each in a process of its own, for SECONDS each:

- the engine: ``LiveEngine`` as ``improviser record`` uses it (deadlines
  ``t0 + k*step``, sleep then spin, the model on its own thread);
- a naive loop: step the model, send, ``time.sleep(step)``, repeat.

For every note-on it compares the arrival time at the monitor with the step's
ideal time ``t0 + k*step`` (t0: the first step's deadline, read on the same
monotonic clock by the player process). Reported: onset error p50/p99/max
(this includes JACK's delivery, up to one period), the error less its median
(the constant part of JACK's delivery: the jitter a listener hears), the same
error at the send itself, drift over the run (a linear fit of the error against time), late
steps, messages lost or garbled, and CPU time per second of music (all threads
of the player process, JACK's client thread included).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from improviser.testing import (
    PERIOD,
    RATE,
    JackUnavailable,
    MidiDump,
    Run,
    dump_notes,
    file_notes,
    grid_residuals,
    input_port,
    jack_server,
    realtime_jack_server,
    start_flood,
)

BACKENDS = ("jack", "rtmidi")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seconds", nargs="?", type=float, default=60.0, help="seconds each player runs")
    ap.add_argument("--bpm", type=float, default=None, help="default: 140 (backends), 120 (--naive)")
    ap.add_argument("--periods", type=int, nargs="+", default=[32, 64, 128, 256, 1024],
                    help="JACK periods, in frames")
    ap.add_argument("--loads", nargs="+", default=list(LOADS), choices=LOADS,
                    help="idle: no input; flood: ~1,000 messages/s on --input virtual, accompanying")
    ap.add_argument("--naive", action="store_true", help="the engine beside a naive loop, at a monitor port")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    ap.add_argument("--jack-realtime", action="store_true",
                    help="--naive: run jackd with real-time scheduling (-R), as on a music machine; needs rtprio")
    ap.add_argument("--child", choices=["engine", "naive", "idle"], help=argparse.SUPPRESS)
    ap.add_argument("--port", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return play_child(args)
    if not args.naive:
        return compare_backends(args)
    args.bpm = args.bpm or 120.0
    with jack_server("improviser-bench", args.jack_realtime):
        import mido

        received: list[tuple[float, list[int]]] = []
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        # The callback only timestamps and appends: it runs on JACK's thread.
        monitor = backend.open_input("monitor", client_name="bench",
                                     callback=lambda m: received.append((time.monotonic(), m.bytes())))
        try:
            idle_s = min(args.seconds, 10.0)
            cmd = [sys.executable, __file__, str(idle_s), "--child", "idle", "--port", "bench:monitor"]
            idle = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            results = {"idle_cpu": 100 * idle["cpu"] / idle_s}
            for kind in ("engine", "naive"):
                received.clear()
                cmd = [sys.executable, __file__, str(args.seconds), "--bpm", str(args.bpm), "--child", kind,
                       "--port", "bench:monitor"] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                time.sleep(0.1)  # the last messages are on their way
                results[kind] = analyse(json.loads(out), list(received))
            report(args, results)
        finally:
            monitor.close()  # before the server goes, or rtmidi crashes at exit


# ---- the backends, at jack_midi_dump --------------------------------------------------------------

LOADS = ("idle", "flood")


def compare_backends(args) -> None:
    args.bpm = args.bpm or 140.0
    results, realtime = {}, {}
    for period in args.periods:
        # Without rtprio rights a server that is not real-time measures the load instead (said in the report).
        with realtime_jack_server("improviser-bench", period) as (_, realtime[period]):
            for load in args.loads:
                results[period, "none", load] = {"xruns": server_xruns(load, args.seconds)}
                for backend in BACKENDS:
                    results[period, backend, load] = run_backend(backend, load, args)
                    r = results[period, backend, load]
                    print(f"-p {period} {backend} {load}: p99 {r['p99']:.3f} ms, {r['arrived']}/{r['notes']} notes, "
                          f"xruns {r['xruns']}", file=sys.stderr)
    report_backends(args, results, realtime)


def server_xruns(load: str, seconds: float) -> int:
    """The xruns a bare JACK client (a C callback: none in Python) counts in ``seconds`` with jack_midi_dump
    running and, for "flood", the flood going into a bare input port: the server's and the machine's own, the
    baseline the improviser's count is read against."""
    import jack

    dump = MidiDump()
    client = jack.Client("xrun-count")
    count = [0]
    client.set_xrun_callback(lambda delay: count.__setitem__(0, count[0] + 1))
    port = client.midi_inports.register("in")
    client.activate()
    flooder = None
    try:
        if load == "flood":
            flooder, name = start_flood(seconds)
            client.connect(f"{name}:out", port)
            flooder.stdin.write("go\n")
            flooder.stdin.flush()
        time.sleep(seconds)
    finally:
        if flooder is not None:
            flooder.kill()
        client.deactivate()
        client.close()
        dump.stop()
    return count[0]


def run_backend(backend: str, load: str, args) -> dict:
    """``improviser record`` with ``backend`` into jack_midi_dump (with ``load`` "flood": ``--input virtual --mode
    accompany`` and ~1,000 messages a second of every kind on that input); what arrived, against the grid and
    the file."""
    step = 60.0 / args.bpm / 4
    dump = MidiDump()
    flooder = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "take.mid"
        cmd = ["record", str(out), "--seconds", str(args.seconds), "--bpm", str(args.bpm), "--seed", "1",
               "--api", "jack", "--jack-backend", backend, "--output", dump.client]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        if load == "flood":
            flooder, client = start_flood(max(args.seconds - 1.5, 1.0))  # (as the soak: it ends before the run)
            cmd += ["--input", "virtual", "--mode", "accompany"]
        run = Run(*cmd)
        try:
            if flooder is not None:
                run.wait_for("playing into", timeout=60)
                subprocess.run(["jack_connect", f"{client}:out", input_port()], check=True, timeout=30)
                flooder.stdin.write("go\n")
                flooder.stdin.flush()
            err = run.finish(timeout=args.seconds + 120)
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
            if flooder is not None:
                flooder.kill()
        time.sleep(0.1)  # the last messages are on their way
        events = dump.stop()
        if run.proc.returncode != 0:
            sys.exit(f"improviser record --jack-backend {backend} ({load}) failed: {err.strip()[-500:]}")
        saved = file_notes(out)[0]
    heard = dump_notes(events, RATE)
    onsets = np.unique([n[1] for n in heard])
    resid = np.abs(grid_residuals(onsets, step)) * 1e3
    worst = np.argsort(resid)[-3:][::-1]
    print(f"  {backend} {load}: worst onsets (s into the run, ms off): "
          + ", ".join(f"{onsets[i] - onsets[0]:.2f} s {resid[i]:.3f}" for i in worst), file=sys.stderr)
    lags = np.array([h[1] - s[1] for h, s in zip(heard, saved)])
    offs = sum(1 for _, d in events if len(d) == 3 and (d[0] & 0xF0 == 0x80 or (d[0] & 0xF0 == 0x90 and d[2] == 0)))
    late = re.search(r"(\d+) messages written after their time", err)
    lead = re.search(r"handed over ([\d.]+) ms ahead", err)
    xruns = re.search(r"(\d+) JACK xruns", err)
    return {
        "p50": np.percentile(resid, 50), "p99": np.percentile(resid, 99), "max": resid.max(),
        "lag_p99": np.percentile(np.abs(lags - np.median(lags)), 99) * 1e3,
        "notes": len(saved), "arrived": len(heard), "offs": offs,
        "same": [n[0] for n in heard] == [n[0] for n in saved],
        "late": late.group(1) if late else "-", "lead": lead.group(1) if lead else "-",
        "xruns": xruns.group(1) if xruns else "-",
    }


def report_backends(args, results: dict, realtime: dict) -> None:
    periods = args.periods
    print(f"timing at jack_midi_dump: {args.seconds:g} s per run at {args.bpm:g} bpm (step "
          f"{60 / args.bpm / 4 * 1e3:.1f} ms), JACK dummy driver {RATE} Hz, "
          + ", ".join(f"-p {p} {'real-time' if realtime[p] else 'NOT real-time'}" for p in periods)
          + "; flood: --input virtual --mode accompany, ~1,000 messages/s in")
    rows = [("onset jitter p50, grid (ms)", "p50", "{:.3f}"), ("onset jitter p99, grid (ms)", "p99", "{:.3f}"),
            ("onset jitter max, grid (ms)", "max", "{:.3f}"),
            ("lag behind the file, p99 (ms)", "lag_p99", "{:.3f}"), ("notes in the file", "notes", "{}"),
            ("notes arrived", "arrived", "{}"), ("note-offs arrived", "offs", "{}"),
            ("same notes in the same order", "same", "{!s}"), ("messages written late", "late", "{}"),
            ("JACK xruns (the improviser's count)", "xruns", "{}"), ("lead (ms)", "lead", "{}")]
    print("\nJACK xruns with no improviser (a bare client, the same seconds and load): "
          + ", ".join(f"-p {p} {load} {results[p, 'none', load]['xruns']}" for p in periods for load in args.loads))
    for load in args.loads:
        print(f"\n{load}")
        print(f"{'':38}" + "".join(f"{f'-p {p} ({p / RATE * 1e3:.2f} ms)':>22}" for p in periods))
        print(f"{'':38}" + "".join(f"{b:>11}" for _ in periods for b in BACKENDS))
        for label, key, fmt in rows:
            print(f"{label:38}" + "".join(f"{fmt.format(results[p, b, load][key]):>11}" for p in periods
                                          for b in BACKENDS))


# ---- the players (child processes) ---------------------------------------------------------------

class LoggedPort:
    """A mido port that notes every message's send time (monotonic) and bytes."""

    def __init__(self, port):
        self.port, self.name, self.sent = port, port.name, []
        self.step = None  # the naive loop says which step it is sending; the engine's is worked out

    def send(self, msg) -> None:
        self.sent.append((time.monotonic(), msg.bytes(), self.step))
        self.port.send(msg)

    def close(self) -> None:
        self.port.close()


def play_child(args) -> None:
    if args.child == "idle":  # the cost of a JACK client that only has a port open
        from improviser.ports.midi import backend

        port = backend("jack").open_output(args.port)
        cpu0 = time.process_time()
        time.sleep(args.seconds)
        json.dump({"cpu": time.process_time() - cpu0}, sys.stdout)
        port.close()
        return
    from threadpoolctl import threadpool_limits

    from improviser.live.engine import LiveEngine, frame_messages, realtime_process
    from improviser.model.generator import StreamingGenerator
    from improviser.model.network import default_checkpoint, load_checkpoint
    from improviser.ports.midi import OutputPort, backend

    model, _ = load_checkpoint(args.checkpoint or default_checkpoint())
    threadpool_limits(1, "blas")  # for both players, so the CPU figures compare the loops, not BLAS's spinning
    gen = StreamingGenerator(model, temperature=0.9, note_stability=1, seed=1)
    step = 60.0 / args.bpm / model.cfg.steps_per_beat
    raw = LoggedPort(backend("jack").open_output(args.port))
    port = OutputPort(raw, args.port)
    n_steps = int(args.seconds / step)
    late = None
    cpu0 = time.process_time()
    if args.child == "engine":
        engine = LiveEngine(gen, args.bpm, port)
        with realtime_process():
            engine.run(n_steps * step)
        t0, late = engine.timing.t0, engine.conductor.stats.late_steps
    else:  # the naive loop: compute, send, sleep one step, repeat
        sounding = np.zeros(128, bool)
        t0 = time.monotonic()
        for k in range(n_steps):
            raw.step = k
            frame = gen.step()
            for msg in frame_messages(sounding, frame):
                port.send(msg)
            sounding = frame.sound
            time.sleep(step)
        raw.step = None
        port.silence()
    cpu = time.process_time() - cpu0
    port.close()
    json.dump({"t0": t0, "step": step, "n_steps": n_steps, "cpu": cpu, "late": late, "sent": raw.sent}, sys.stdout)


# ---- analysis ------------------------------------------------------------------------------------

def analyse(run: dict, received: list) -> dict:
    sent = run["sent"]
    t0, step = run["t0"], run["step"]
    bad = sum(a[1] != b[1] for a, b in zip(sent, received)) + abs(len(sent) - len(received))
    onset_err, send_err, at = [], [], []
    for i, (t_send, data, k) in enumerate(sent):
        is_on = data[0] & 0xF0 == 0x90 and data[2] > 0
        if k is None:  # the engine sends within a fraction of a step of its deadline
            k = round((t_send - t0) / step)
        if not is_on or k >= run["n_steps"] or i >= len(received):
            continue
        ideal = t0 + k * step
        onset_err.append(received[i][0] - ideal)
        send_err.append(t_send - ideal)
        at.append(ideal - t0)
    onset_err, send_err, at = np.array(onset_err), np.array(send_err), np.array(at)
    worst = int(np.argmax(np.abs(send_err)))
    slope = np.polyfit(at, onset_err, 1)[0] if len(at) > 2 else float("nan")
    seconds = run["n_steps"] * step
    return {
        "onsets": len(onset_err),
        "p50": np.percentile(np.abs(onset_err), 50) * 1e3,
        "p99": np.percentile(np.abs(onset_err), 99) * 1e3,
        "max": np.abs(onset_err).max() * 1e3,
        # Less the constant part (JACK's delivery, on average about one period): what a listener hears as jitter.
        "jitter_p99": np.percentile(np.abs(onset_err - np.median(onset_err)), 99) * 1e3,
        "send_p99": np.percentile(np.abs(send_err), 99) * 1e3,
        "send_max": np.abs(send_err).max() * 1e3,
        "worst_at": at[worst],
        "drift": slope * seconds * 1e3,
        "late": run["late"],
        "cpu": 100 * run["cpu"] / seconds,
        "bad": bad,
    }


def report(args, results: dict) -> None:
    eng, nai = results["engine"], results["naive"]
    step_ms = 60.0 / args.bpm / 4 * 1e3
    print(f"timing: {args.seconds:g} s per player at {args.bpm:g} bpm (step {step_ms:.1f} ms), "
          f"JACK dummy driver {RATE} Hz -p {PERIOD} (period {PERIOD / RATE * 1e3:.2f} ms), "
          f"{'real-time' if args.jack_realtime else 'not real-time'}")
    print(f"onsets measured: engine {eng['onsets']}, naive {nai['onsets']}")
    rows = [
        ("onset error p50 at monitor (ms)", "p50"),
        ("onset error p99 at monitor (ms)", "p99"),
        ("onset error max at monitor (ms)", "max"),
        ("onset jitter p99 (minus median) (ms)", "jitter_p99"),
        ("send error p99 (ms)", "send_p99"),
        ("send error max (ms)", "send_max"),
        ("drift over the run (ms)", "drift"),
        ("CPU (% of one core)", "cpu"),
        ("messages lost or garbled", "bad"),
    ]
    print(f"{'':38}{'engine':>10}{'naive':>10}{'naive/engine':>14}")
    for label, key in rows:
        a, b = eng[key], nai[key]
        ratio = f"{b / a:14.1f}" if isinstance(a, float) and abs(a) > 1e-9 else f"{'':14}"
        print(f"{label:38}{a:10.3f}{b:10.3f}{ratio}" if isinstance(a, float) else f"{label:38}{a:10}{b:10}")
    print(f"{'late steps':38}{eng['late']:10}{'-':>10}")
    idle = results["idle_cpu"]
    print(f"CPU less an idle JACK client ({idle:.2f} % of a core, its thread wakes every period): "
          f"engine {eng['cpu'] - idle:.2f} %, naive {nai['cpu'] - idle:.2f} %")
    print(f"worst send: engine at {eng['worst_at']:.2f} s, naive at {nai['worst_at']:.2f} s into the run")


if __name__ == "__main__":
    try:
        main()
    except JackUnavailable as e:
        sys.exit(str(e))  # one line: jackd is missing or did not start
