"""The OCI model store and the registry client; knows nothing of HTTP serving or runners."""
