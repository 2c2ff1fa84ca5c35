"""The model: the network and its checkpoints, the streaming generator, training data, training, evaluation.

Built on ``improviser.music``; no clock and no MIDI ports. ``improviser.model`` also answers for
the network module itself (``from improviser.model import load_checkpoint, default_checkpoint``).
"""

from .network import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    HOLD,
    OFF,
    ONSET,
    BachLSTM,
    KeyMemory,
    ModelConfig,
    NumpyLSTM,
    default_checkpoint,
    default_size,
    frame_features,
    frame_targets,
    load_checkpoint,
    save_checkpoint,
    widen,
)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "HOLD", "OFF", "ONSET", "BachLSTM", "KeyMemory", "ModelConfig",
           "NumpyLSTM", "default_checkpoint", "default_size", "frame_features", "frame_targets", "load_checkpoint",
           "save_checkpoint", "widen"]
