"""Ollama's API on the store, the supervisor and the one path to the runners."""
