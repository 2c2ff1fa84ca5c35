"""FluidSynth, a General MIDI SoundFont, and the synth that plays live.

- ``fluidsynth_module()`` imports pyfluidsynth, or raises ``SynthMissing`` with the install command for
  this platform (the Python package and the FluidSynth library are two installs).
- ``find_soundfont(path)``: ``path`` if given (checked: a RIFF ``sfbk`` file), else the first General MIDI
  SoundFont of the system that exists (``soundfont_candidates``), else the one pretty_midi ships.
- ``LiveSynth`` is a sink of the live engine (``LiveEngine(sinks=[synth])``): ``send(msg, t)`` is called on
  the sender thread with every message the MIDI port gets, and with ``--thru`` on the MIDI input's thread
  too. A call only hands the event to FluidSynth (its API takes its own lock, ``synth.threadsafe-api``),
  a few microseconds; FluidSynth's audio driver, a thread of its own, renders and plays it.
- ``play_message`` is the one place a MIDI message becomes a FluidSynth call, live and offline (render).

FluidSynth logs to stderr, in lines of its own, and the audio libraries under it (alsa-lib, libjack) print
theirs on a failed open. So the first use installs, once per process, a FluidSynth log function that keeps
its last messages, and an audio driver is opened with file descriptor 2 silenced: an error is said in one
line that quotes FluidSynth's own reason.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import glob
import importlib.util
import itertools
import os
import sys
import threading
import time
from pathlib import Path

import mido

from ..errors import SynthError, quiet_stderr
from ..music.encoding import DEFAULT_PROGRAM

__all__ = ["DEFAULT_PROGRAM", "LiveSynth", "SynthError", "SynthMissing", "find_soundfont", "fluidsynth_module",
           "play_message"]

N_CHANNELS = 16
DRUM_CHANNEL = 9  # General MIDI's percussion channel (10 counted from 1): FluidSynth gives it the drum kits
LIVE_SAMPLE_RATE = 48000.0  # Hz; a JACK server's own rate wins (FluidSynth follows it)
# FluidSynth's master gain live (its default is 0.2). Measured with FluidR3_GM and String Ensemble: the shipped
# model's four voices peak at -9 to -12 dBFS and sit near -25 dBFS RMS (benchmarks/synth.py --jack), which
# leaves room for the player's notes with --thru.
LIVE_GAIN = 0.5
JACK_CLIENT = "improviser-synth"  # its JACK audio ports: improviser-synth:left and :right
RELEASE_SECONDS = 1.5  # on close, how long the last notes may ring out before the audio stops

PIP_INSTALL = "pip install 'improviser[synth]'"
LIBRARY_INSTALL = {
    "linux": "sudo apt-get install fluidsynth (Fedora: sudo dnf install fluidsynth; Arch: sudo pacman -S fluidsynth)",
    "darwin": "brew install fluid-synth",
    "win32": r"unzip FluidSynth's Windows release (github.com/FluidSynth/fluidsynth/releases) into C:\tools\fluidsynth",
}
SOUNDFONT_INSTALL = {
    "linux": "sudo apt-get install fluid-soundfont-gm (Fedora: fluid-soundfont-gm; Arch: soundfont-fluid)",
    "darwin": "put a General MIDI SoundFont (FluidR3_GM.sf2, GeneralUser GS) in ~/Library/Audio/Sounds/Banks",
    "win32": r"put a General MIDI SoundFont (FluidR3_GM.sf2, GeneralUser GS) in C:\soundfonts",
}
# The platform's own audio output, tried in this order (PipeWire desktops answer as pulseaudio too).
DEFAULT_DRIVERS = {"linux": ("pulseaudio", "pipewire", "alsa"), "darwin": ("coreaudio",),
                   "win32": ("wasapi", "dsound")}


def platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


class SynthMissing(SynthError):
    """pyfluidsynth or the FluidSynth library is not installed; the message says how to install it."""


# ---- FluidSynth, the library -------------------------------------------------------------------------

_LOG_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
PANIC, ERR, WARN, INFO, DBG = range(5)  # FluidSynth's log levels
_log: collections.deque = collections.deque(maxlen=64)  # (n, level, text): FluidSynth's last messages (any thread)
_log_count = itertools.count()
_log_callback = None  # the installed function; kept alive here, FluidSynth holds a pointer to it
_log_lock = threading.Lock()


def _keep_log(level: int, message: bytes, data) -> None:
    _log.append((next(_log_count), level, (message or b"").decode(errors="replace").strip()))


def fluidsynth_module():
    """pyfluidsynth, its library loaded and FluidSynth's log kept (not printed); SynthMissing if absent."""
    global _log_callback
    where = platform()
    try:
        import fluidsynth
    except ImportError as e:
        if getattr(e, "name", None) == "fluidsynth":  # the Python package itself
            raise SynthMissing(f"the synth needs pyfluidsynth and the FluidSynth library: {PIP_INSTALL}, and "
                               f"{LIBRARY_INSTALL.get(where, LIBRARY_INSTALL['linux'])}") from None
        raise SynthMissing(f"the FluidSynth library is missing ({e}): "
                           f"{LIBRARY_INSTALL.get(where, LIBRARY_INSTALL['linux'])}") from None
    except OSError as e:  # found, but it does not load
        raise SynthMissing(f"the FluidSynth library does not load ({e}): reinstall it: "
                           f"{LIBRARY_INSTALL.get(where, LIBRARY_INSTALL['linux'])}") from None
    if not hasattr(fluidsynth, "Synth") or not hasattr(fluidsynth, "_fl"):
        raise SynthMissing("the 'fluidsynth' Python module here is not pyfluidsynth: "
                           "pip uninstall fluidsynth && pip install pyfluidsynth")
    with _log_lock:
        if _log_callback is None:
            _log_callback = _LOG_FUNCTION(_keep_log)
            set_log = _c("fluid_set_log_function", ctypes.c_void_p, ctypes.c_int, _LOG_FUNCTION, ctypes.c_void_p)
            for level in (PANIC, ERR, WARN, INFO, DBG):
                set_log(level, _log_callback, None)
    return fluidsynth


def _c(name: str, restype, *argtypes):
    """A FluidSynth C function with its own prototype (pyfluidsynth's own declarations are left alone)."""
    import fluidsynth

    return ctypes.CFUNCTYPE(restype, *argtypes)((name, fluidsynth._fl))


def fluidsynth_version() -> str:
    """The FluidSynth library's version, e.g. '2.3.1'."""
    fluidsynth_module()
    return _c("fluid_version_str", ctypes.c_char_p)().decode()


def _log_mark() -> int:
    return _log[-1][0] + 1 if _log else 0


def _reason(mark: int) -> str:
    """FluidSynth's errors since ``mark``, in one line (its other messages if it logged no error)."""
    said = [(level, text) for n, level, text in list(_log) if n >= mark and text]
    errors = [text for level, text in said if level <= ERR]
    errors += [text for level, text in said if level == INFO and "supports the following" in text]  # drivers
    return "; ".join(errors or [text for level, text in said if level <= INFO][-2:]) or "no reason given"


# ---- SoundFonts --------------------------------------------------------------------------------------

def soundfont_candidates() -> list[Path]:
    """Where General MIDI SoundFonts are looked for, best first (most need not exist)."""
    home = Path.home()
    paths = [
        "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian, Ubuntu: fluid-soundfont-gm
        "/usr/share/soundfonts/FluidR3_GM.sf2",  # Fedora, Arch (soundfont-fluid)
        "/usr/share/soundfonts/FluidR3_GM.sf3",
        "/usr/share/sounds/sf2/default-GM.sf2",  # Debian's alternative: the GM SoundFont installed
        "/usr/share/soundfonts/default.sf2",
        "/usr/share/sounds/sf3/default-GM.sf3",
        "/usr/share/sounds/sf3/MuseScore_General.sf3",
        "/usr/share/sounds/sf2/TimGM6mb.sf2",
        "/opt/homebrew/share/soundfonts/default.sf2",  # Homebrew (Apple silicon, then Intel)
        "/usr/local/share/soundfonts/default.sf2",
        "/opt/homebrew/share/sounds/sf2/FluidR3_GM.sf2",
        "/usr/local/share/sounds/sf2/FluidR3_GM.sf2",
        str(home / ".local/share/soundfonts/FluidR3_GM.sf2"),
        str(home / ".fluidsynth/default_sound_font.sf2"),  # FluidSynth's own default on macOS and Windows
        r"C:\soundfonts\default.sf2",
        r"C:\soundfonts\FluidR3_GM.sf2",
        r"C:\tools\fluidsynth\share\soundfonts\default.sf2",
    ]
    found = [Path(p) for p in paths]
    found += [Path(p) for pattern in (str(home / "Library/Audio/Sounds/Banks/*.sf2"),
                                      str(home / ".local/share/soundfonts/*.sf2"), r"C:\soundfonts\*.sf2")
              for p in sorted(glob.glob(pattern))]
    default = _fluidsynth_default_soundfont()
    if default is not None:
        found.append(default)
    found += shipped_soundfonts()
    return found


def shipped_soundfonts() -> list[Path]:
    """SoundFonts that come inside a dependency: pretty_midi's small TimGM6mb.sf2 (a General MIDI set)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.origin:
        return []
    return [Path(spec.origin).parent / "TimGM6mb.sf2"]


def _fluidsynth_default_soundfont() -> Path | None:
    """The SoundFont FluidSynth was built to use by default (its setting synth.default-soundfont), if any."""
    try:
        fs = fluidsynth_module()
    except SynthMissing:
        return None
    settings = fs.new_fluid_settings()
    try:
        buf = ctypes.create_string_buffer(4096)
        copy = _c("fluid_settings_copystr", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                  ctypes.c_int)
        if copy(settings, b"synth.default-soundfont", buf, len(buf)) != 0 or not buf.value:
            return None
        return Path(buf.value.decode(errors="replace"))
    finally:
        fs.delete_fluid_settings(settings)


def is_soundfont(path: Path) -> bool:
    """A RIFF file of form ``sfbk``: SoundFont 2 (.sf2) or 3 (.sf3, compressed samples)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"sfbk"


def check_soundfont(path: str | os.PathLike) -> Path:
    """``path``, a readable SoundFont; SynthError in one line otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SynthError(f"--soundfont {path} is a folder; give a .sf2 or .sf3 file")
    if not path.is_file():
        raise SynthError(f"--soundfont {path}: no such file")
    if not os.access(path, os.R_OK):
        raise SynthError(f"--soundfont {path}: permission denied")
    if not is_soundfont(path):
        raise SynthError(f"--soundfont {path} is not a SoundFont (.sf2 or .sf3: a RIFF file of form 'sfbk')")
    return path


def find_soundfont(path: str | os.PathLike | None = None) -> Path:
    """``path`` checked, else the best General MIDI SoundFont found here; SynthError if there is none."""
    if path is not None:
        return check_soundfont(path)
    for candidate in soundfont_candidates():
        if candidate.is_file() and is_soundfont(candidate):
            return candidate
    raise SynthError(f"no General MIDI SoundFont found: {SOUNDFONT_INSTALL.get(platform(), SOUNDFONT_INSTALL['linux'])}"
                     ", or pass --soundfont PATH")


# ---- a synth -----------------------------------------------------------------------------------------

def open_synth(soundfont: Path, sample_rate: float, gain: float, program: int = DEFAULT_PROGRAM,
               settings: dict | None = None):
    """A pyfluidsynth ``Synth`` with ``soundfont`` loaded and General MIDI ``program`` on every channel but
    the drums'; ``settings``: more FluidSynth settings (name -> value). No audio driver."""
    fs = fluidsynth_module()
    synth = fs.Synth(gain=gain, samplerate=float(sample_rate), channels=N_CHANNELS, **(settings or {}))
    mark = _log_mark()
    if synth.sfload(str(soundfont)) < 0:
        synth.delete()
        raise SynthError(f"FluidSynth cannot load the SoundFont {soundfont}: {_reason(mark)}")
    for channel in range(N_CHANNELS):
        if channel != DRUM_CHANNEL:
            synth.program_change(channel, program)
    return synth


def play_message(synth, msg: mido.Message) -> None:
    """Apply one MIDI message to a pyfluidsynth ``Synth`` (notes, controls, programs, pitch bend; the rest,
    such as sysex and clock, is not sound and is left out)."""
    kind = msg.type
    if kind == "note_on":
        synth.noteon(msg.channel, msg.note, msg.velocity)  # velocity 0 is a note-off to FluidSynth too
    elif kind == "note_off":
        synth.noteoff(msg.channel, msg.note)
    elif kind == "control_change":
        synth.cc(msg.channel, msg.control, msg.value)  # CC 123 (all notes off), sustain, volume ...
    elif kind == "program_change":
        synth.program_change(msg.channel, msg.program)
    elif kind == "pitchwheel":
        synth.pitch_bend(msg.channel, msg.pitch)


def all_notes_off(synth) -> None:
    """Sustain pedal up and all notes off (CC 64 = 0, CC 123) on every channel: they ring out and stop."""
    for channel in range(N_CHANNELS):
        synth.cc(channel, 64, 0)
        synth.cc(channel, 123, 0)


@contextlib.contextmanager
def _no_jack_autostart():
    """libjack starts a JACK server of its own when none runs; the MIDI ports never do, nor does the synth."""
    old = os.environ.get("JACK_NO_START_SERVER")
    os.environ["JACK_NO_START_SERVER"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JACK_NO_START_SERVER", None)
        else:
            os.environ["JACK_NO_START_SERVER"] = old


def audio_drivers(api: str | None = None, audio_driver: str | None = None) -> tuple[str, ...]:
    """The FluidSynth audio drivers to try, in order: ``audio_driver``; else jack for ``--api jack``; else the
    platform's own output."""
    if audio_driver:
        return (audio_driver,)
    if (api or "").lower() == "jack":
        return ("jack",)
    return DEFAULT_DRIVERS.get(platform(), ("",))  # "": FluidSynth's own default


DRIVER_FIXES = {
    "pulseaudio": "start PulseAudio or PipeWire (a desktop session has one)",
    "alsa": "a sound card (`aplay -l` lists them), or --audio-driver NAME",
    "jack": "start a JACK server first (`jackd -d alsa`, qjackctl, or PipeWire's `pw-jack`)",
    "coreaudio": "check the output device in System Settings > Sound",
}


def _start_driver(synth, name: str):
    """(FluidSynth's audio driver ``name`` started on ``synth``, None), or (None, FluidSynth's reason)."""
    if name:
        synth.setting("audio.driver", name)
    new_driver = _c("new_fluid_audio_driver", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    mark = _log_mark()
    with quiet_stderr(), _no_jack_autostart():
        driver = new_driver(synth.settings, synth.synth)
    return (driver, None) if driver else (None, _reason(mark))


def _delete_driver(driver) -> None:
    _c("delete_fluid_audio_driver", None, ctypes.c_void_p)(driver)


def probe_audio(name: str) -> str | None:
    """None if FluidSynth's audio driver ``name`` opens here (and is closed again at once), else the reason."""
    fs = fluidsynth_module()
    synth = fs.Synth(gain=0.0, samplerate=LIVE_SAMPLE_RATE, channels=N_CHANNELS,
                     **{"audio.jack.id": "improviser-probe", "audio.jack.autoconnect": 0})
    try:
        driver, reason = _start_driver(synth, name)
        if driver:
            _delete_driver(driver)
        return reason
    finally:
        synth.delete()


class LiveSynth:
    """FluidSynth playing every message it is sent through an audio driver: a sink of the live engine.

    soundfont: a General MIDI SoundFont (``find_soundfont``). Every channel starts on ``DEFAULT_PROGRAM``
    (the drums' on the drum kit); program changes sent to it (the engine's at the start, the player's with
    --thru) change that. api / audio_driver: see ``audio_drivers``. With jack it makes the audio ports
    ``improviser-synth:left`` and ``:right`` and connects them nowhere (``jack_connect`` them).
    """

    def __init__(self, soundfont: str | os.PathLike, api: str | None = None, audio_driver: str | None = None,
                 gain: float = LIVE_GAIN, sample_rate: float = LIVE_SAMPLE_RATE, jack_client: str = JACK_CLIENT):
        self.soundfont = Path(soundfont)
        self.closed = False
        self._lock = threading.Lock()  # send (sender and input threads) against close
        # Everything is loaded now: a SoundFont loaded as it plays would read the disk on the sender's thread.
        self._synth = open_synth(self.soundfont, sample_rate, gain,
                                 settings={"audio.jack.id": jack_client, "audio.jack.autoconnect": 0,
                                           "audio.jack.multi": "no"})
        self._driver = None
        failures = []
        names = audio_drivers(api, audio_driver)
        for name in names:
            self._driver, reason = _start_driver(self._synth, name)
            if self._driver:
                self.driver = name or self._synth.get_setting("audio.driver")
                break
            if len(names) == 1 or "Couldn't find the requested" not in reason:  # not built in: not worth saying
                failures.append(f"{name or 'default'}: {reason}")
        if not self._driver:
            self._synth.delete()
            fix = (DRIVER_FIXES.get(names[0], "see `improviser doctor`") if len(names) == 1
                   else f"{DRIVER_FIXES['pulseaudio']}, or use --api jack with a JACK server running, "
                        "or choose a driver with --audio-driver NAME")
            raise SynthError(f"the synth has no audio output ({'; '.join(failures)}): {fix}")

    def send(self, msg: mido.Message, t: float | None = None) -> None:
        """Sound ``msg`` now (``t``, its send time, is not needed: it is now). Any thread; never waits long."""
        with self._lock:
            if not self.closed:
                play_message(self._synth, msg)

    def close(self, release: float = RELEASE_SECONDS) -> None:
        """All notes off, let them ring out (up to ``release`` s), then stop the audio. Safe to call twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            all_notes_off(self._synth)
        try:  # a second Ctrl-C cuts the release short, never the clean-up
            deadline = time.monotonic() + release
            while self._synth.get_active_voice_count() > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(max(0.0, min(0.25, deadline - time.monotonic())))  # the reverb's own tail
        finally:
            _delete_driver(self._driver)
            self._synth.delete()

    def __enter__(self) -> LiveSynth:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
