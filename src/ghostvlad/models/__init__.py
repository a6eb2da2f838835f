"""Networks: backbones, poolings, heads and the speaker encoder, each chosen by name from a registry."""
from .backbones import BACKBONES
from .encoder import EncoderConfig, SpeakerEncoder, stack
from .heads import HEADS
from .pooling import POOLINGS

__all__ = ["BACKBONES", "HEADS", "POOLINGS", "EncoderConfig", "SpeakerEncoder", "stack"]
