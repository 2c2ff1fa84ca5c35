"""improviser: a real-time MIDI improviser built on an LSTM trained on J. S. Bach."""

from .errors import ImproviserError
from .model.generator import StreamingGenerator, generate
from .model.network import BachLSTM, ModelConfig, load_checkpoint
from .music.encoding import Frame, Grid, read_midi, write_midi

__all__ = ["BachLSTM", "Frame", "Grid", "ImproviserError", "ModelConfig", "StreamingGenerator", "generate",
           "load_checkpoint", "read_midi", "write_midi"]
__version__ = "0.1.0"
