"""The engine: which llama-server runs here, proven by a probe, and the native build of one.

``cpu`` (what this machine can execute), ``cache`` (per-user directories that outlive clones),
``probe_model`` and ``probe`` (does a binary really run here), ``choose`` (the one owner of
"which llama-server"), ``source`` and ``build`` (a llama-server compiled for this CPU).
"""
