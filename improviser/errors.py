"""The one error family of the project.

Library code raises these where a problem is found, with a message that says
what to do. Only the CLI turns them into a line on stderr and an exit code.
"""


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
