"""The one way from a request to a runner and back: ``inference.pass_through``, the runner
client and its connection pool, the stream pump, SSE framing."""
