"""The one error family of the project.

Library code raises these where a problem is found, with a message that says
what to do. Only the CLI turns them into a line on stderr and an exit code.
``quiet_stderr`` keeps C libraries (alsa-lib, libjack, FluidSynth) from adding lines of
their own to that one.
"""

from __future__ import annotations

import contextlib
import os
import sys


class ImproviserError(Exception):
    """A problem the user can fix; the message says how."""


class CheckpointError(ImproviserError):
    """A checkpoint is missing, corrupt, hostile or of an unknown format."""


class MidiFileError(ImproviserError):
    """A MIDI file cannot be read, or holds no usable notes."""


class DataError(ImproviserError):
    """Training data is missing or nothing usable is left after reading it."""


class PortError(ImproviserError):
    """A MIDI port or MIDI system is missing or cannot be opened."""


class SynthError(ImproviserError):
    """The built-in synth (FluidSynth), its SoundFont or its audio output is missing or cannot be used."""


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C libraries' own messages) for the duration; Python errors still raise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. some test runners): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
