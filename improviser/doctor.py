"""Which MIDI systems work on this machine, whether the built-in synth can sound here, and exactly how to fix
each one that does not."""

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


def check_sound() -> list[Check]:
    """The built-in synth (--synth, render): FluidSynth, a SoundFont, and the audio outputs it can open."""
    from importlib.metadata import PackageNotFoundError, version

    from .errors import SynthError
    from .sound import synth

    checks = []
    try:
        synth.fluidsynth_module()
    except synth.SynthMissing as e:
        checks.append(Check("synth", False, f"--synth and render: {e}"))
    else:
        try:
            binding = f", pyfluidsynth {version('pyfluidsynth')}"
        except PackageNotFoundError:
            binding = ""
        checks.append(Check("synth", True, f"FluidSynth {synth.fluidsynth_version()}{binding}: --synth and render "
                                           "work"))
    try:
        font = synth.find_soundfont()
    except SynthError as e:
        checks.append(Check("soundfont", False, str(e)))
    else:
        better = (f" (a small one that comes with pretty_midi; a fuller sound: "
                  f"{synth.SOUNDFONT_INSTALL.get(synth.platform(), synth.SOUNDFONT_INSTALL['linux'])})"
                  if font in synth.shipped_soundfonts() else "")
        checks.append(Check("soundfont", True, f"{font}{better}"))
    if not checks[0].ok:
        return checks
    tried = []
    for name in synth.DEFAULT_DRIVERS.get(synth.platform(), ("",)):
        reason = synth.probe_audio(name)
        if reason is None:
            checks.append(Check("audio", True, f"{name or 'the default'}: `improviser record --synth` sounds here"))
            break
        if "Couldn't find the requested" not in reason:  # a driver this FluidSynth was built without
            tried.append(f"{name}: {reason}")
    else:
        checks.append(Check("audio", False, f"no default output ({'; '.join(tried)}). Fix: "
                                            f"{synth.DRIVER_FIXES['pulseaudio']}, or use --api jack"))
    reason = synth.probe_audio("jack")
    checks.append(Check("audio", reason is None, "jack: --synth --api jack makes JACK audio ports" if reason is None
                        else f"jack: {reason} Fix: {synth.DRIVER_FIXES['jack']}"))
    return checks


def report(checks: list[Check], sound: list[Check] = ()) -> str:
    """The MIDI systems' lines, the synth's, and what to run."""
    lines = [f"{'ok  ' if c.ok else 'MISSING'} {c.api:9} {c.detail}" for c in [*checks, *sound]]
    good = [c.api for c in checks if c.ok]
    if good:
        api = default_api() if default_api() in good else good[0]
        lines.append(f"-> play with: improviser play --api {api}")
    else:
        lines.append("-> no MIDI system here; `improviser generate` and `improviser record` still write MIDI files")
    return "\n".join(lines)
