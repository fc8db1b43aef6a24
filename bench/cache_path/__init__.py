"""The semantic cache in the request path, end to end through real processes.

    python -m bench.cache_path [--concurrency 1,8] [--rounds 4] [--miss-pairs 60] [--burst 60]
                               [--load-below 1.5] [--wait-load 300] [--json FILE]
    python -m bench.cache_path --summarize run1.json run2.json run3.json

Starts a throwaway ``redis-server``, the embedder (``python -m embedder``, ONNX
int8), the cache service (``python -m semcache`` on that Redis), one mock model
server (32 tokens, 20 ms to first token, 5 ms between tokens) and, in front of
the same mock, with metrics and request logs on, the two gateways compared:
CACHED (``GATEWAY_CACHE_TARGET`` and ``GATEWAY_EMBEDDER_TARGET``, every cache
setting at its default, see ``gateway.settings``) and PLAIN (no sidecars); and
a third, VERDICT, like CACHED but with a 1 s lookup budget and the upstream
started only after the lookup, used only to ask the verifier about the
paraphrases whatever the machine's load. Every request
has ``temperature: 0`` (cacheable). Then, at each concurrency:

1. **exact hits**: questions primed into the cache (first ask with
   ``Cache-Control: no-cache``, then asked until one says ``HIT-EXACT``), timed
   request sent -> last byte (``data: [DONE]`` seen when streamed);
2. **semantic hits**: paraphrases made by simple rewrites of the primed
   questions (``How do I`` <-> ``How can I``, ``What is`` <-> ``What's``, a
   trailing ``?`` added or removed, a few reworded by hand), each asked once
   through VERDICT (``HIT-SEMANTIC`` with the primed question's own answer,
   counted per rewrite with the lookup outcome), then the accepted ones timed
   through CACHED, JSON and streamed. Every timed paraphrase is a spacing
   variant never sent before (:func:`spaced`): same tokens, same vector, same
   verdict, but its own exact key, so one that misses (over budget) and is
   stored cannot turn the later ones into exact hits;
3. **miss cost**: never-seen questions, each sent to CACHED and to PLAIN one
   after the other (the order alternating), streamed: time to first token and
   total, and the difference of the p50s;
4. **fail-open**: for each of the embedder, the cache service and Redis:
   SIGKILL it, send a burst of mixed requests (would-be exact and semantic
   hits, misses, streamed and not) through CACHED and count errors and
   ``X-Cache`` values; restart it and poll until a known question is a hit
   again (for the embedder a semantic hit, with never-sent paraphrase variants).

Every hit's answer is checked: the mock answers each prompt with its own
tokens, so a hit must carry the primed question's answer (or, for a
paraphrase, the answer stored when one of its variants missed). Before each
timed case it waits until a primed question is a ``HIT-EXACT`` and a
paraphrase a ``HIT-SEMANTIC`` again, so a sidecar breaker opened in the case
before does not carry over. The services' own histograms give the mean time
of each step of the lookup.

Before starting anything it waits (bounded) for the machine's 1-minute load
average to fall under ``--load-below``, and prints it with the tables. CPU
time (user + system) of the processes is read around every timed case.
``--json`` keeps the run; ``--summarize`` prints the medians of the target
figures over several runs. Everything started is stopped at the end, also on
Ctrl-C, SIGTERM or an error. Logs go to ``var/log/bench/cache_path/``.

The package, one concern a module: ``questions`` (what is asked), ``stack`` (the
processes), ``client`` (one timed request), ``metrics`` (the services' own
counters), ``session`` (priming, settling, timed windows), ``cases`` (the timed
cases in order), ``report`` (the tables) and ``__main__`` (flags, running, JSON).
"""
