"""improviser: a real-time MIDI improviser built on an LSTM trained on J. S. Bach."""

from .encoding import Frame, Grid, read_midi, write_midi
from .errors import ImproviserError
from .generator import StreamingGenerator, generate
from .model import BachLSTM, ModelConfig, load_checkpoint

__all__ = ["BachLSTM", "Frame", "Grid", "ImproviserError", "ModelConfig", "StreamingGenerator", "generate",
           "load_checkpoint", "read_midi", "write_midi"]
__version__ = "0.1.0"
