"""gRPC clients to the sidecars (embedder, cache), each behind a short-lived breaker."""
