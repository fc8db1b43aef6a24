"""Embedding sidecar: all-MiniLM-L6-v2 over gRPC, concurrent callers batched together."""
