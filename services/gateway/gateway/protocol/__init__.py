"""The OpenAI protocol, in one place: what every other layer speaks.

- ``schemas``: request bodies as the gateway validates them;
- ``calls``: the kind of call (chat or completion, decided once, from the
  route) and the texts a request carries (the prompt, the parts routed on);
- ``sse``: watching an SSE stream as it passes (first token, ``[DONE]``,
  error events, usage), whatever the TCP reads cut;
- ``answer``: a complete answer assembled from a stream or a body, and
  replayed as JSON or as SSE (``assemble``, ``replay``; ``fidelity``: the
  fields a replay gives back, so what the cache may store).

This package imports nothing else of the gateway; every layer may import it.
"""
