"""ghostvlad: speaker recognition with Thin-ResNet34 + NetVLAD/GhostVLAD (Xie et al., ICASSP 2019).

The public API is imported lazily, so ``import ghostvlad`` (and the CLI's ``--help``) stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {
    "AudioError": "audio",
    "load_audio": "audio",
    "SpeakerModel": "inference",
    "load_model": "loading",
    "ModelFileError": "modelfile",
    "GhostvladError": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ghostvlad' has no attribute {name!r}")
