"""The command-line client; talks to the daemon over HTTP only (except `serve` and setup verbs)."""
