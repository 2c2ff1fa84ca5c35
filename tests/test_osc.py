"""Open Sound Control (``--osc``, ``--osc-send``), end to end: ``improviser record`` on a real JACK server, a
python-osc client turning its tempo and a python-osc server hearing what it sends.

Covered: /improviser/tempo moves the onsets at the port within a step or two; every note it plays reaches the
OSC peer as /improviser/note (note-offs with velocity 0); /improviser/state when a setting changes; a bad
control is answered with /improviser/error and the music goes on.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from improviser.testing import Run, monitor_notes

pytestmark = pytest.mark.jack

BPM = 100.0
STEP = 60 / BPM / 4


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_osc_turns_the_tempo_and_hears_every_note(jack_server, monitor, tmp_path):
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer
    from pythonosc.udp_client import SimpleUDPClient

    got: dict[str, list] = {"/improviser/note": [], "/improviser/state": [], "/improviser/error": []}
    dispatcher = Dispatcher()
    for address in got:
        dispatcher.map(address, lambda a, *args: got[a].append((time.monotonic(), args)))
    peer = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    osc_port = free_udp_port()
    run = Run("record", str(tmp_path / "take.mid"), "--seconds", "14", "--bpm", str(BPM), "--seed", "5",
              "--api", "jack", "--output", monitor.client, "--osc", str(osc_port),
              "--osc-send", f"127.0.0.1:{peer.server_address[1]}")
    try:
        run.wait_for("playing into")
        client = SimpleUDPClient("127.0.0.1", osc_port)
        client.send_message("/improviser/temperature", 1.4)  # (more notes to time)
        time.sleep(4)
        # A bad control: answered, counted, the music goes on (from the peer's own port, so the answer comes back).
        peer.socket.sendto(_message("/improviser/mode", "sideways"), ("127.0.0.1", osc_port))
        client.send_message("/improviser/tempo", 150.0)
        t_tempo = time.monotonic()
        err = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        time.sleep(0.2)
        peer.shutdown()
        peer.server_close()
    assert "wrote" in err
    # The tempo: onsets after it (a step or two for it to take) are on the 150 bpm grid, off the old one.
    times = sorted(t for t, m in monitor.messages("note_on") if m.velocity > 0)
    onsets = np.array([t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.003])
    gaps = np.diff(onsets[onsets > t_tempo + 2 * STEP])
    new_step = 60 / 150 / 4
    on_new = np.abs(gaps / new_step - np.round(gaps / new_step)) * new_step < 0.004
    assert len(gaps) > 6 and on_new.mean() > 0.9, gaps[:20]
    assert (np.abs(gaps / STEP - np.round(gaps / STEP)) * STEP > 0.01).any()
    # Every note at the port was sent over OSC, note-offs as velocity 0.
    at_port = [(m.note, m.velocity if m.type == "note_on" else 0) for _, m in monitor.messages("note_on", "note_off")]
    over_osc = [(args[0], args[1]) for _, args in got["/improviser/note"]]
    # (The real-time side may repeat a note-off on its stop path: the worker's peers never see those.)
    assert sorted(on for on in at_port if on[1]) == sorted(on for on in over_osc if on[1])
    assert {off for off in at_port if not off[1]} == {off for off in over_osc if not off[1]}
    assert sum(v > 0 for _, v in over_osc) > 20
    states = [args for _, args in got["/improviser/state"]]
    assert states and states[-1][0] == 150.0 and abs(states[-1][1] - 1.4) < 1e-6
    assert any("respond or accompany" in args[0] for _, args in got["/improviser/error"])
    monitor_notes(monitor)


def _message(address: str, *args) -> bytes:
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address)
    for a in args:
        builder.add_arg(a)
    return builder.build().dgram
