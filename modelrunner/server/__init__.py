"""The daemon: aiohttp app, routes, listeners and signals (the composition root)."""
