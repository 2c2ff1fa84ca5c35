"""The web page (``--web``), end to end: ``improviser record`` as a user runs it on a real JACK server, a monitor
port timestamping what it plays, and the page in a real browser (Debian's headless Chromium, driven by
Playwright for Python with ``executable_path``; Playwright's own browser download is never used).

Covered: the page shows its notes within 1 s of their reaching the port; the page's tempo slider moves the
onsets at the port within a step or two, its temperature slider reaches the state; keys typed on the page's
keyboard land on the session file's ``player`` track; GET /state and /ws; a WebSocket or a control from
another Origin is refused, and so is a foreign Host; beyond 127.0.0.1 a token is needed; bad options are one
line before any note.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import skip_or_fail

from improviser.testing import Run, cli, file_notes, monitor_notes, one_line_error


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"text": text}


# ---- bad options: one line, before any port opens (no JACK needed) ---------------------------------------------

def test_a_web_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = one_line_error(cli("record", tmp_path / "x.mid", "--web", "--web-port", port), "--web-port",
                             "in use")
    assert str(port) in err
    assert not (tmp_path / "x.mid").exists()


def test_an_unknown_web_host_is_one_line(tmp_path):
    one_line_error(cli("record", tmp_path / "x.mid", "--web", "--web-host", "no-such-host.invalid"), "--web-host")
    one_line_error(cli("play", "--sessions", tmp_path, "--web", "--web-host", "192.0.2.7"), "--web-host",
                   "not an address of this machine")


def test_osc_on_a_port_in_use_is_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        one_line_error(cli("record", tmp_path / "x.mid", "--osc", port), "--osc", "in use")
    one_line_error(cli("record", tmp_path / "x.mid", "--osc-send", "nowhere"), "--osc-send", "HOST:PORT")


def test_web_options_without_web_are_one_line(tmp_path):
    one_line_error(cli("record", tmp_path / "x.mid", "--web-token", "sesame-sesame"), "--web")


# ---- in a browser, on JACK ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's), through Playwright's sync API."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install playwright (the test extra)")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail("chromium not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


BPM = 100.0
STEP = 60 / BPM / 4


def onset_times(monitor) -> np.ndarray:
    """When notes started at the monitor, a chord's notes (within 3 ms) taken once."""
    times = sorted(t for t, m in monitor.messages("note_on") if m.velocity > 0)
    return np.array([t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.003])


@pytest.mark.jack
def test_the_page_shows_plays_and_steers(jack_server, monitor, browser, tmp_path):
    port = free_port()
    out = tmp_path / "take.mid"
    run = Run("record", str(out), "--seconds", "24", "--bpm", str(BPM), "--seed", "3", "--api", "jack",
              "--output", monitor.client, "--web", "--web-port", str(port), "--mode", "accompany")
    base = f"http://127.0.0.1:{port}"
    try:
        run.wait_for("the web page")
        run.wait_for("playing into")
        page = browser.new_page()
        # Every note event the page takes, with the wall-clock time it came (the monitor's clock is put on it).
        page.add_init_script("""window.__got = []; const _ws = window.WebSocket;
            window.WebSocket = function (...a) { const s = new _ws(...a);
              s.addEventListener('message', (e) => { const m = JSON.parse(e.data);
                if (m.type === 'notes') for (const ev of m.events)
                  if (ev[3] > 0) window.__got.push([Date.now() / 1000, ev[1], ev[2]]); });
              return s; };""")
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('link').textContent === 'live'", timeout=10_000)
        wall = time.time() - time.monotonic()
        shown_from = time.monotonic()

        # 1. The page shows what reaches the port within 1 s.
        time.sleep(4)
        got = page.evaluate("window.__got")
        sent = [(t + wall, m.note) for t, m in monitor.messages("note_on") if m.velocity > 0 and t > shown_from + 0.5]
        sent = [s for s in sent if s[0] < time.time() - 1.0]  # the page has had its second for these
        assert len(sent) > 5, f"only {len(sent)} notes at the port"
        delays = []
        for t, pitch in sent:
            later = [g[0] - t for g in got if g[2] == pitch and g[1] == 0 and g[0] >= t - 0.05]
            delays.append(min(later) if later else np.inf)
        delays = np.array(delays)
        assert np.all(delays < 1.0), f"notes shown late or never: {np.sort(delays)[-5:]}"

        # 2. /state says what the page shows.
        status, text = get(base + "/state")
        state = json.loads(text)
        assert status == 200 and state["tempo"] == BPM and state["mode"] == "accompany"
        assert page.inner_text("#s-tempo") == "100.0"
        status, text = get(base + "/state", {"Host": f"rebound.example:{port}"})  # DNS rebinding: refused
        assert status == 403 and "rebound.example" in text

        # 3. The temperature slider reaches the state within a step; the tempo slider moves the onsets.
        page.eval_on_selector("#temperature", "e => { e.value = 1.5; e.dispatchEvent(new Event('input')); }")
        t_temp = time.monotonic()
        while json.loads(get(base + "/state")[1])["temperature"] != 1.5:
            assert time.monotonic() < t_temp + 2, "the temperature never reached the state"
            time.sleep(0.01)
        assert time.monotonic() - t_temp < 3 * STEP + 0.1
        before = onset_times(monitor)
        page.eval_on_selector("#tempo", "e => { e.value = 150; e.dispatchEvent(new Event('input')); }")
        t_tempo = time.monotonic()
        time.sleep(6)
        new_step = 60 / 150 / 4
        after = onset_times(monitor)
        after = after[after > t_tempo + 2 * STEP]  # within a step of its arrival (and a step the grid keeps)
        gaps = np.diff(after)
        on_new = np.abs(gaps / new_step - np.round(gaps / new_step)) * new_step < 0.004
        off_old = np.abs(gaps / STEP - np.round(gaps / STEP)) * STEP > 0.01
        assert len(gaps) > 6 and on_new.mean() > 0.9, f"onsets not on the 150 bpm grid: {gaps[:20]}"
        assert off_old.any(), "every gap still fits the old grid"
        assert len(before) > 3, f"only {len(before)} onsets before the tempo moved"
        assert page.inner_text("#s-tempo") == "150.0"

        # 4. Keys typed on the page's keyboard are the player's: C, E, G (a, d, g at octave 4).
        page.click("h1")
        for key in "adg":
            page.keyboard.down(key)
            time.sleep(0.15)
            page.keyboard.up(key)
            time.sleep(0.1)
        time.sleep(0.5)
        page.close()
        err = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    player = file_notes(out, "player")[0]
    assert [p for p, _, _ in player] == [60, 64, 67], player
    assert "heard 6 note messages" in err
    monitor_notes(monitor)  # nothing left hanging


@pytest.mark.jack
def test_another_origin_and_host_are_refused_and_the_token_beyond_localhost(jack_server, monitor, tmp_path):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    port = free_port()
    run = Run("record", str(tmp_path / "x.mid"), "--seconds", "12", "--api", "jack", "--output", monitor.client,
              "--web", "--web-port", str(port), "--web-host", "0.0.0.0")
    try:
        run.wait_for("the web page")
        run.wait_for("playing into")
        url = re.search(r"the web page: (\S+)", run.text()).group(1)
        token = re.search(r"\?token=(\S+)", url).group(1)
        base = f"http://127.0.0.1:{port}"
        status, text = get(base + "/state")
        assert status == 403 and len(text.strip().splitlines()) == 1 and "token" in text
        status, text = get(base + f"/state?token={token}")
        assert status == 200 and "tempo" in json.loads(text)
        auth = {"Authorization": f"Bearer {token}"}
        # A control from a page elsewhere: refused even with the token.
        status, reply = post(base + "/control", {"name": "temperature", "value": 0.5},
                             {**auth, "Origin": "http://evil.example"})
        assert status == 403
        status, reply = post(base + "/control", {"name": "temperature", "value": 9}, auth)
        assert status == 400 and "temperature" in reply["error"]
        status, reply = post(base + "/control", {"name": "temperature", "value": 0.5}, auth)
        assert status == 200
        # The WebSocket: another Origin is refused; the page's own is served.
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{port}/ws?token={token}", origin="http://evil.example").close()
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}", origin=f"http://127.0.0.1:{port}") as ws:
            first = json.loads(ws.recv(timeout=5))
            assert first["type"] == "state"
            ws.send(json.dumps({"type": "control", "name": "mode", "value": "sideways"}))
            ws.send("not json")
            errors = []
            deadline = time.monotonic() + 5
            while len(errors) < 2 and time.monotonic() < deadline:
                m = json.loads(ws.recv(timeout=5))
                if m["type"] == "error":
                    errors.append(m["error"])
            assert len(errors) == 2 and "respond or accompany" in errors[0]
        time.sleep(0.5)  # (a few steps)
        status, text = get(base + f"/state?token={token}")
        assert json.loads(text)["refused"] >= 3
        assert json.loads(text)["temperature"] == 0.5
        err = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert "wrote" in err
