"""Shared fixtures. JACK: a real server (dummy driver) for the tests that send MIDI between real ports.

There is no ALSA sequencer on the machines these tests run on, so MIDI goes
through JACK (Debian package ``jackd2``). The server is started once per test
session under a unique name, which the tests and the improviser processes they
start find through ``JACK_DEFAULT_SERVER``. Without jackd the JACK tests skip
locally, and fail in CI (when ``CI`` is set): they must never skip silently there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

JACK_PERIOD = 32  # frames; at 48 kHz one period is 0.67 ms


@pytest.fixture(scope="session")
def model():
    """The shipped checkpoint's model (loaded once)."""
    from improviser.model.network import default_checkpoint, load_checkpoint

    return load_checkpoint(default_checkpoint())[0]


def _jack_answers(env: dict) -> bool:
    probe = subprocess.run(["jack_lsp"], env=env, capture_output=True, text=True, timeout=10)
    return probe.returncode == 0 and "system:" in probe.stdout


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory):
    """The name of a running JACK server (dummy driver, -p 32), set as JACK_DEFAULT_SERVER."""
    missing = [tool for tool in ("jackd", "jack_lsp") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not found: install JACK (Debian/Ubuntu: apt-get install jackd2)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"improviser-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name)
    # -S (synchronous): each cycle waits for every client. In JACK2's default asynchronous mode a
    # client that is a little late (no real-time priority, a busy CPU) gets its MIDI buffer read
    # half-written, and messages arrive garbled or lost.
    # Its output goes to a file, never to a pipe nobody reads: under load jackd logs every xrun,
    # and a full pipe blocks the server, which then hangs every client that talks to it.
    log_path = tmp_path_factory.mktemp("jack") / "jackd.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed when the server stops
    server = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-S", "-d", "dummy", "-r", "48000",
                               "-p", str(JACK_PERIOD)],
                              env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while not _jack_answers(env):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log_file.close()
            pytest.fail(f"jackd did not start: {log_path.read_text().strip()[-500:]}")
        time.sleep(0.1)
    old = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name  # this process's ports and every subprocess use it
    try:
        yield name
    finally:
        if old is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = old
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log_file.close()


class Monitor:
    """A virtual JACK MIDI input that timestamps (time.monotonic) every message as it arrives.

    Its port name is ``<client>:<port>``; the improviser plays into it with ``--output <port>``.
    """

    def __init__(self, port: str = "monitor", client: str | None = None):
        import mido

        self.client = client or f"mon{uuid.uuid4().hex[:6]}"
        self.name = f"{self.client}:{port}"
        self.received: list[tuple[float, object]] = []
        backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
        # The callback only timestamps and appends: it runs on JACK's thread.
        self._port = backend.open_input(port, client_name=self.client,
                                        callback=lambda msg: self.received.append((time.monotonic(), msg)))

    def messages(self, *types: str) -> list[tuple[float, object]]:
        return [(t, m) for t, m in list(self.received) if not types or m.type in types]

    def close(self) -> None:
        self._port.close()


@pytest.fixture
def monitor(jack_server):
    """A Monitor on the test's JACK server, closed before the server stops."""
    mon = Monitor()
    try:
        yield mon
    finally:
        mon.close()
