"""modelrunner: a local model runner that speaks Docker Model Runner's API on llama-server."""

__version__ = "0.1.0"
