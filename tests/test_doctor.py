"""`improviser doctor` on this machine: no ALSA sequencer here; JACK works once a server runs."""

import os

from typer.testing import CliRunner

from improviser.cli import app


def test_doctor_says_what_is_missing_and_how_to_fix_it(jack_server):
    r = CliRunner().invoke(app, ["doctor"])
    lines = r.stdout.splitlines()
    alsa = next(line for line in lines if " alsa " in line)
    jack = next(line for line in lines if " jack " in line)
    assert jack.startswith("ok"), jack
    if not os.path.exists("/dev/snd/seq"):
        assert alsa.startswith("MISSING") and "modprobe snd-seq" in alsa
    assert "improviser play --api" in lines[-1]
    assert r.exit_code == 0
