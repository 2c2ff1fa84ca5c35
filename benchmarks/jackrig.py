"""The JACK server the benchmarks measure against: dummy driver, 48 kHz, -p 32, synchronous.

    with jack_server("improviser-bench", realtime=False) as name: ...

Its output goes to /dev/null, never a pipe nobody reads (under load jackd logs every xrun
and a full pipe would block it). -S (synchronous): a late client delays the cycle instead
of getting its MIDI garbled (see tests/conftest.py). Close every port before the block
ends, or rtmidi crashes at exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid

RATE = 48000
PERIOD = 32  # frames: 0.67 ms at 48 kHz


@contextlib.contextmanager
def jack_server(prefix: str, realtime: bool = False):
    """Start a uniquely named jackd, make it this process's (and its children's) default, yield its name."""
    if not shutil.which("jackd"):
        sys.exit("jackd not found: install JACK (Debian/Ubuntu: apt-get install jackd2)")
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    os.environ["JACK_DEFAULT_SERVER"] = name
    server = subprocess.Popen(["jackd", "-n", name, "-R" if realtime else "--no-realtime", "-S", "-d", "dummy",
                               "-r", str(RATE), "-p", str(PERIOD)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["jack_lsp"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            sys.exit("jackd did not start")
        yield name
    finally:
        server.terminate()
        server.wait()
