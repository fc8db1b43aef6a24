"""Dynamic batching, in the style of text-embeddings-inference.

::

    call --admit--> tokenize --> queue <--takes a batch-- inference thread --> model
          (full: RESOURCE_EXHAUSTED)      (drops expired,                         |
                                           cancelled calls)    answers <-- one hop to the loop

- Admission is immediate: a call whose texts would push the queue past
  ``max_queue_texts`` is refused at once, before any work is done for it.
- Small requests (up to ``INLINE_TOKENIZE_CHARS`` characters, a few hundred
  microseconds at most) are tokenized on the event loop: a thread hop costs
  more than that. Larger ones are tokenized in their own thread: a request
  near the size limit takes tens of milliseconds, which must not stall the loop.
- Each inference thread (``workers`` of them) takes everything waiting, oldest
  first, up to ``max_batch_size`` texts and ``max_batch_tokens`` padded tokens
  (texts x the longest one, since every row is padded to it), runs it as one
  batch, hands the vectors back to the event loop in one call, and takes the
  next batch at once. The event loop only appends to the queue and wakes a
  thread: the model never waits for the loop to hand it work, and a batch
  costs one thread hop each way. There is no timer: a lone call runs at once,
  and calls that arrive while the model is busy form the next batch.
- A call's texts may span batches; its answer is sent when the last one is done.
- Calls whose deadline passed, or that were cancelled, are dropped before
  their texts reach the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.errors import DeadlineExpired, EmbedderError, InferenceFailed, NotReady, Overloaded
from embedder.metrics import Metrics
from embedder.model import EmbeddingModel, ModelInfo, TokenizedText, Vectors
from llmgw_common.logs import get_logger

log = get_logger(__name__)

# About 0.3 us per character with this tokenizer: at most ~0.3 ms on the loop.
INLINE_TOKENIZE_CHARS = 1024


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int
    max_queue_texts: int
    workers: int = 1  # model runs at once, each in its own thread


@dataclass(frozen=True, slots=True)
class Embedded:
    """The answer to one call: vectors in input order, and what the model saw."""

    vectors: Vectors
    tokens: list[TokenizedText]


@dataclass(eq=False, slots=True)
class _Job:
    tokens: list[TokenizedText]
    future: asyncio.Future[Vectors]  # touched on the event loop only
    deadline: float | None  # on time.monotonic()
    vectors: Vectors | None = None
    scheduled: int = 0  # texts handed to a batch so far (under the batcher's lock)
    finished: int = 0  # texts whose vector is in ``vectors`` (on the event loop)


@dataclass(slots=True)
class _Batch:
    items: list[tuple[_Job, int]] = field(default_factory=list)
    longest: int = 0
    # Calls dropped while this batch was taken, and the error each one gets.
    dropped: list[tuple[_Job, EmbedderError | None]] = field(default_factory=list)


class Batcher:
    def __init__(self, model: EmbeddingModel, limits: BatchLimits, metrics: Metrics) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        # The queue and its count are shared by the event loop (which appends)
        # and the inference threads (which take batches): both under this lock.
        self._lock = threading.Condition(threading.Lock())
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0  # admitted, not yet in a batch (includes those tokenizing)
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    def start(self) -> None:
        """Start the inference threads; call on the event loop that will await ``embed``."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._threads = [
            threading.Thread(target=self._work, name=f"infer-{n}", daemon=True)
            for n in range(self._limits.workers)
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Stop the threads and fail whatever is still queued (after a drain: nothing).

        A batch already in the model finishes and is answered; the threads then exit.
        """
        with self._lock:
            self._running = False
            queued = list(self._queue)
            self._queue.clear()
            for job in queued:
                self._drop(job, "shutdown")
            self._lock.notify_all()
        self._fail([(job, None) for job in queued], NotReady("the embedder is shutting down"))
        self._threads = []
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Embedded:
        """Embed ``texts`` with whoever else is waiting; ``deadline`` is on the loop's clock."""
        if not self._running:
            raise NotReady("the embedder is not running")
        loop = asyncio.get_running_loop()
        if deadline is not None:
            deadline = time.monotonic() + (deadline - loop.time())
        self._admit(len(texts))
        try:
            if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                tokens = self._model.tokenize(texts)
            else:
                tokens = await loop.run_in_executor(
                    self._tokenize_pool, self._model.tokenize, texts
                )
        except BaseException:
            self._release(len(texts))
            raise
        job = _Job(tokens=tokens, future=loop.create_future(), deadline=deadline)
        with self._lock:
            if not self._running:
                self._release_locked(len(texts))
                raise NotReady("the embedder is shutting down")
            self._queue.append(job)
            self._lock.notify()
        # Cancelling this call cancels the future; a thread then skips the job.
        vectors = await job.future
        return Embedded(vectors=vectors, tokens=tokens)

    def _admit(self, count: int) -> None:
        with self._lock:
            if self._queued_texts + count > self._limits.max_queue_texts:
                raise Overloaded(
                    f"the embedder's queue is full ({self._queued_texts} texts waiting, "
                    f"limit {self._limits.max_queue_texts}); retry later or elsewhere"
                )
            self._queued_texts += count
            self._metrics.queue_depth.set(self._queued_texts)

    def _release(self, count: int) -> None:
        with self._lock:
            self._release_locked(count)

    def _release_locked(self, count: int) -> None:
        self._queued_texts -= count
        self._metrics.queue_depth.set(self._queued_texts)

    # In the inference threads.

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running and not self._queue:
                    self._lock.wait()
                if not self._running:
                    return
                batch = self._next_batch(time.monotonic())
            if batch.dropped:
                self._call_soon(self._fail, batch.dropped, None)
            if batch.items:
                self._run_batch(batch)

    def _next_batch(self, now: float) -> _Batch:
        """Take texts, oldest first, until a limit is reached; drop dead calls on the way."""
        batch = _Batch()
        while self._queue and len(batch.items) < self._limits.max_batch_size:
            job = self._queue[0]
            if job.future.done():  # cancelled: a read, safe from any thread
                self._queue.popleft()
                self._drop(job, "cancelled")
                batch.dropped.append((job, None))
                continue
            if job.deadline is not None and job.deadline <= now:
                self._queue.popleft()
                self._drop(job, "expired")
                error = DeadlineExpired("the call's deadline passed while it was queued")
                batch.dropped.append((job, error))
                continue
            if not self._fill(batch, job):
                break
            self._queue.popleft()
        self._release_locked(len(batch.items))
        return batch

    def _fill(self, batch: _Batch, job: _Job) -> bool:
        """Add ``job``'s next texts to ``batch``; True when all of them are in."""
        while job.scheduled < len(job.tokens):
            if len(batch.items) >= self._limits.max_batch_size:
                return False
            length = len(job.tokens[job.scheduled].ids)
            longest = max(batch.longest, length)
            if batch.items and (len(batch.items) + 1) * longest > self._limits.max_batch_tokens:
                return False
            batch.items.append((job, job.scheduled))
            batch.longest = longest
            job.scheduled += 1
        return True

    def _drop(self, job: _Job, reason: str) -> None:
        """Forget a call (under the lock) before its remaining texts reach the model."""
        waiting = len(job.tokens) - job.scheduled
        self._release_locked(waiting)
        self._metrics.dropped.labels(reason).inc(waiting)
        job.scheduled = len(job.tokens)

    def _run_batch(self, batch: _Batch) -> None:
        tokens = [job.tokens[index] for job, index in batch.items]
        started = time.perf_counter()
        try:
            vectors = self._model.embed(tokens)
        except Exception as exc:
            log.exception("inference_failed", batch_size=len(tokens))
            self._metrics.errors.labels("inference").inc()
            failure = InferenceFailed(f"the model failed on a batch of {len(tokens)} texts")
            failure.__cause__ = exc
            self._call_soon(self._fail, [(job, None) for job, _ in batch.items], failure)
            return
        self._metrics.inference_duration.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(tokens))
        self._metrics.tokens.inc(sum(len(item.ids) for item in tokens))
        self._call_soon(self._deliver, batch.items, vectors)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the event loop: futures belong to it."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)

    # On the event loop.

    @staticmethod
    def _fail(jobs: list[tuple[_Job, EmbedderError | None]], default: Exception | None) -> None:
        """Fail each call with its own error, else ``default``; None for both: just forget it."""
        for job, own in jobs:
            error = own or default
            if error is not None and not job.future.done():
                job.future.set_exception(error)

    @staticmethod
    def _deliver(items: list[tuple[_Job, int]], vectors: Vectors) -> None:
        for (job, index), vector in zip(items, vectors, strict=True):
            if job.future.done():
                continue
            if len(job.tokens) == 1:
                job.future.set_result(vector[None, :])
                continue
            if job.vectors is None:
                job.vectors = np.empty((len(job.tokens), vector.shape[-1]), dtype=np.float32)
            job.vectors[index] = vector
            job.finished += 1
            if job.finished == len(job.tokens):
                job.future.set_result(job.vectors)
