"""Which MIDI systems work on this machine, and exactly how to fix each one that does not."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .errors import PortError
from .ports.midi import APIS, MidiSystemMissing, default_api, list_ports

# What a musician does about each system, per platform, when it is missing.
FIXES = {
    "alsa": "load the ALSA sequencer: `sudo modprobe snd-seq` (and `echo snd-seq | sudo tee -a /etc/modules` "
            "to keep it); in a container pass `--device /dev/snd/seq`",
    "jack": "start a JACK server: `jackd -d alsa` (with a sound card), `jackd -d dummy` (none), qjackctl, "
            "or PipeWire's JACK layer (`pw-jack improviser ...`)",
    "coremidi": "open Audio MIDI Setup > Window > Show MIDI Studio, double-click IAC Driver, tick "
                "'Device is online'",
    "winmm": "install loopMIDI (Tobias Erichsen), add a port in it, and pass `--output loopMIDI` "
             "(Windows MIDI cannot make virtual ports)",
}
PLATFORM_APIS = {"linux": ["alsa", "jack"], "darwin": ["coremidi", "jack"], "win32": ["winmm"]}


@dataclass
class Check:
    api: str
    ok: bool
    detail: str


def check_all(apis: list[str] | None = None) -> list[Check]:
    """Try every MIDI API relevant here: can we list (and so open) ports on it?"""
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    apis = apis or PLATFORM_APIS.get(platform, list(APIS))
    checks = []
    for api in apis:
        try:
            ports = list_ports(api)
        except MidiSystemMissing as e:
            built_without = "built without" in str(e)
            checks.append(Check(api, False, str(e) if built_without else f"not running. Fix: {FIXES[api]}"))
        except PortError as e:
            checks.append(Check(api, False, str(e)))
        else:
            checks.append(Check(api, True, f"works: {len(ports.outputs)} output and {len(ports.inputs)} input "
                                           "ports" + (" (the default)" if api == default_api() else "")))
    return checks


def report(checks: list[Check]) -> str:
    lines = [f"{'ok  ' if c.ok else 'MISSING'} {c.api:9} {c.detail}" for c in checks]
    good = [c.api for c in checks if c.ok]
    if good:
        api = default_api() if default_api() in good else good[0]
        lines.append(f"-> play with: improviser play --api {api}")
    else:
        lines.append("-> no MIDI system here; `improviser generate` and `improviser record` still write MIDI files")
    return "\n".join(lines)
