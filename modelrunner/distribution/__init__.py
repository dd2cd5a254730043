"""The OCI model store and the registry client; knows nothing of HTTP serving or runners."""

from .artifact import UnsupportedModel
from .gguf import GGUFError, GGUFInfo, read_gguf
from .model import GCResult, Model, ProgressEvent, ProgressFn, RemoveResult
from .reference import Reference, parse_reference
from .store import Store

__all__ = [
    "GCResult",
    "GGUFError",
    "GGUFInfo",
    "Model",
    "ProgressEvent",
    "ProgressFn",
    "Reference",
    "RemoveResult",
    "Store",
    "UnsupportedModel",
    "parse_reference",
    "read_gguf",
]
