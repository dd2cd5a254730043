"""What watches the daemon work: the request log, live events and their SSE fan-out, metrics,
and the accounting ``inference.pass_through`` does for each request."""
