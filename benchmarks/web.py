"""The web page's cost to the music, and its memory over reloads, on a real JACK server.

    python benchmarks/web.py [SECONDS] [--minutes M] [--bpm 120] [--screenshot docs/web.png]

Starts a JACK server of its own (dummy driver, -p 32, real-time where allowed) and a monitor port that
timestamps what arrives, and runs ``improviser record --web --mode accompany`` into it: one run, three parts
of SECONDS each. In the first nobody watches; in the second a WebSocket client in this process takes the
events and sends a temperature control every 20 ms (~50 a second: the server's own cost); in the third
headless Chromium (the system's, through Playwright) shows the page while its temperature slider is dragged
back and forth (an input event every 20 ms; the browser's CPU is on the same cores). Reported for each: the
onsets' jitter against the tempo grid at the monitor (distinct note-on times less the grid's phase: p50, p99,
max in ms), the notes, the JACK xruns in it, and whether its p99 is within 10 % of the first's.

Then (``--minutes``, default 10; 0 skips it) ``improviser play --web`` with the page reloaded every 10 s:
the worker's resident memory (VmRSS) every minute, and its growth from the first minute to the last.
``--screenshot PATH`` saves a picture of the page as it plays (the README's).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from improviser import testing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drag_over_websocket(port: int, seconds: float) -> int:
    """A temperature control every 20 ms for ``seconds`` over /ws, reading what comes; the controls sent."""
    import json
    import threading

    from websockets.sync.client import connect

    sent = 0
    with connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}") as ws:
        done = threading.Event()

        def read():
            while not done.is_set():
                try:
                    ws.recv(timeout=0.2)
                except TimeoutError:
                    pass
                except Exception:  # noqa: BLE001 -- closed
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ws.send(json.dumps({"type": "control", "name": "temperature", "value": 0.8 + 0.4 * (sent % 20) / 20}))
            sent += 1
            time.sleep(0.02)
        done.set()
        reader.join(1)
    return sent


def jitter_ms(monitor: testing.Monitor, start: float, end: float, step: float) -> tuple[np.ndarray, int]:
    times = sorted(t for t, m in monitor.messages("note_on") if m.velocity > 0 and start <= t < end)
    onsets = np.array([t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.003])
    if len(onsets) < 3:
        return np.array([np.nan]), len(times)
    return np.abs(testing.grid_residuals(onsets, step)) * 1e3, len(times)


def testing_xruns():
    """A JACK client counting the server's xruns (every message in the graph is late then, whoever sent it)."""
    import uuid

    import jack

    class Xruns:
        def __init__(self):
            self.times: list[float] = []  # appended on JACK's thread
            self.client = jack.Client(f"xrun{uuid.uuid4().hex[:6]}", no_start_server=True)
            self.client.set_xrun_callback(lambda usecs: self.times.append(time.monotonic()))
            self.client.activate()

        def close(self):
            self.client.deactivate()
            self.client.close()

    return Xruns()


def line(name: str, r: np.ndarray, n: int) -> str:
    return (f"{name:<28} onset jitter p50 {np.percentile(r, 50):6.2f}  p99 {np.percentile(r, 99):6.2f}  "
            f"max {r.max():6.2f} ms   {n} notes")


def launch(p):
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        sys.exit("chromium not found: apt-get install chromium")
    return p.chromium.launch(executable_path=path, args=["--no-sandbox"])


DRAG = """() => { const s = document.getElementById('temperature'); let i = 0;
  window.__drag = setInterval(() => { s.value = 0.8 + 0.4 * Math.abs(Math.sin(i++ / 10));
    s.dispatchEvent(new Event('input')); }, 20); }"""


def cost(seconds: float, bpm: float, folder: Path, screenshot: Path | None) -> None:
    from playwright.sync_api import sync_playwright

    step = 60 / bpm / 4
    monitor = testing.Monitor()
    port = free_port()
    run = testing.Run("record", str(folder / "take.mid"), "--seconds", str(3 * seconds + 10), "--bpm", str(bpm),
                      "--seed", "1", "--api", "jack", "--output", monitor.client, "--web", "--web-port", str(port),
                      "--mode", "accompany", "--temperature", "1.0")
    try:
        run.wait_for("playing into")
        xruns = testing_xruns()
        t0 = time.monotonic() + 1.0
        time.sleep(1.0 + seconds)
        ta = time.monotonic()
        n_sent = drag_over_websocket(port, seconds)
        tb = time.monotonic()
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('link').textContent === 'live'", timeout=10_000)
            t1 = time.monotonic()
            page.evaluate(DRAG)
            time.sleep(seconds)
            t2 = time.monotonic()
            page.evaluate("clearInterval(window.__drag)")
            if screenshot is not None:
                for key in "adgj":  # a few of the player's notes in the roll too
                    page.keyboard.down(key)
                    time.sleep(0.2)
                    page.keyboard.up(key)
                time.sleep(0.5)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        err = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        monitor.close()
        xruns.close()
    print(f"same run, {seconds:g} s each at {bpm:g} bpm (JACK -p 32):")
    a = None
    for name, (start, end) in [("nobody watching", (t0, t0 + seconds)),
                               (f"websocket, {n_sent / seconds:.0f} controls/s", (ta, tb)),
                               ("page open, slider dragged", (t1, t2))]:
        r, n = jitter_ms(monitor, start, end, step)
        p99 = np.percentile(r, 99)
        a = p99 if a is None else a
        print(line(name, r, n) + f"   {sum(start <= t < end for t in xruns.times)} xruns"
              + (f"   p99 {p99 / a * 100 - 100:+.0f} %" if p99 is not a else ""))
    print("its own summary:", err.strip().splitlines()[-1])
    if screenshot is not None:
        print(f"wrote {screenshot}")


def memory(minutes: float, bpm: float, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    monitor = testing.Monitor()
    port = free_port()
    run = testing.Run("play", "--sessions", str(folder / "sessions"), "--bpm", str(bpm), "--seed", "2",
                      "--api", "jack", "--output", monitor.client, "--web", "--web-port", str(port),
                      "--mode", "accompany")
    readings = []
    try:
        run.wait_for("playing into")
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            start = time.monotonic()
            n = 0
            while time.monotonic() < start + minutes * 60:
                page.goto(f"http://127.0.0.1:{port}/")
                n += 1
                if n % 6 == 1:
                    worker = testing.children(run.proc.pid)
                    rss = testing.peak_rss_mb(worker[0], "VmRSS") if worker else float("nan")
                    readings.append(((time.monotonic() - start) / 60, rss))
                    print(f"  {readings[-1][0]:5.1f} min  {n:4d} loads  worker RSS {rss:7.1f} MiB", flush=True)
                time.sleep(10)
            browser.close()
    finally:
        run.stop()
        monitor.close()
    first, last = readings[min(1, len(readings) - 1)][1], readings[-1][1]
    print(f"worker RSS {first:.1f} MiB at minute {readings[min(1, len(readings) - 1)][0]:.0f}, {last:.1f} MiB at "
          f"minute {readings[-1][0]:.0f}: {last - first:+.1f} MiB over {n} page loads")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seconds", nargs="?", type=float, default=30.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--bpm", type=float, default=120.0)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, testing.realtime_jack_server("improviser-web") as (_, realtime):
        print(f"JACK server {'real-time' if realtime else 'not real-time (no rtprio rights)'}")
        cost(args.seconds, args.bpm, Path(tmp), args.screenshot)
        if args.minutes > 0:
            memory(args.minutes, args.bpm, Path(tmp))


if __name__ == "__main__":
    main()
