"""The semantic cache in the request path: keys, policy, lookup, store, replay."""
