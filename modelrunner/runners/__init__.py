"""llama-server processes and the supervisor that decides which models stay loaded.

Knows nothing of HTTP routes or OCI: the server hands the supervisor a ``resolve`` callable that
turns a model id into its files (``ModelFiles``).
"""

from modelrunner.runners.model import MODES, Mode, ModelFiles, ResolveFn

__all__ = ["MODES", "Mode", "ModelFiles", "ResolveFn"]
