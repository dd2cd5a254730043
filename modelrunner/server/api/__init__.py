"""The API families: routes, parsing, translation and answer shapes; nothing of transports."""
