"""Upstream streaming: forward bytes as they arrive, watch them on the way."""
