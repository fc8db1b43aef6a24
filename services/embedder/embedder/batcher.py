"""Dynamic batching, in the style of text-embeddings-inference.

::

    call --admit--> tokenize (thread) --> queue --worker--> embed one batch (thread) --> futures
          (full: RESOURCE_EXHAUSTED)            (drops expired / cancelled calls)

- Admission is immediate: a call whose texts would push the queue past
  ``max_queue_texts`` is refused at once, before any work is done for it.
- Small requests (up to ``INLINE_TOKENIZE_CHARS`` characters, a few hundred
  microseconds at most) are tokenized on the event loop: a thread hop costs
  more than that. Larger ones are tokenized in their own thread: a request
  near the size limit takes tens of milliseconds, which must not stall the loop.
- A worker takes everything waiting, oldest first, up to ``max_batch_size``
  texts and ``max_batch_tokens`` padded tokens (texts x the longest one, since
  every row is padded to it), and runs it as one batch in the inference
  thread. While it runs, new calls queue up and form the next batch: there is
  no timer, so a lone call never waits for company.
- A call's texts may span batches; its answer is sent when the last one is done.
- Calls whose deadline passed, or that were cancelled, are dropped before
  their texts reach the model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from embedder.errors import DeadlineExpired, InferenceFailed, NotReady, Overloaded
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
    future: asyncio.Future[Vectors]
    deadline: float | None  # on the loop's clock
    vectors: Vectors | None = None
    scheduled: int = 0  # texts handed to a batch so far
    finished: int = 0  # texts whose vector is in ``vectors``


@dataclass(slots=True)
class _Batch:
    items: list[tuple[_Job, int]] = field(default_factory=list)
    longest: int = 0


class Batcher:
    def __init__(self, model: EmbeddingModel, limits: BatchLimits, metrics: Metrics) -> None:
        self._model = model
        self._limits = limits
        self._metrics = metrics
        self._queue: deque[_Job] = deque()
        self._queued_texts = 0  # admitted, not yet in a batch (includes those tokenizing)
        self._wake = asyncio.Event()
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._infer_pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="infer")
        self._workers: list[asyncio.Task[None]] = []

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._run(), name=f"embedder-batcher-{n}")
            for n in range(self._limits.workers)
        ]

    async def close(self) -> None:
        """Stop the workers and fail whatever is still queued (after a drain: nothing)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while self._queue:
            self._drop(self._queue.popleft(), "shutdown", NotReady("the embedder is shutting down"))
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str], deadline: float | None = None) -> Embedded:
        """Embed ``texts`` with whoever else is waiting; ``deadline`` is on the loop's clock."""
        if not self._workers:
            raise NotReady("the embedder is not running")
        self._admit(len(texts))
        loop = asyncio.get_running_loop()
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
        self._queue.append(job)
        self._wake.set()
        # Cancelling this call cancels the future; the worker then skips the job.
        vectors = await job.future
        return Embedded(vectors=vectors, tokens=tokens)

    def _admit(self, count: int) -> None:
        if self._queued_texts + count > self._limits.max_queue_texts:
            raise Overloaded(
                f"the embedder's queue is full ({self._queued_texts} texts waiting, "
                f"limit {self._limits.max_queue_texts}); retry later or elsewhere"
            )
        self._queued_texts += count
        self._metrics.queue_depth.set(self._queued_texts)

    def _release(self, count: int) -> None:
        self._queued_texts -= count
        self._metrics.queue_depth.set(self._queued_texts)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            batch = self._next_batch(asyncio.get_running_loop().time())
            if not batch.items:
                self._wake.clear()
                continue
            await self._run_batch(batch)

    def _next_batch(self, now: float) -> _Batch:
        """Take texts, oldest first, until a limit is reached; drop dead calls on the way."""
        batch = _Batch()
        while self._queue and len(batch.items) < self._limits.max_batch_size:
            job = self._queue[0]
            if job.future.done():
                self._drop(self._queue.popleft(), "cancelled")
                continue
            if job.deadline is not None and job.deadline <= now:
                error = DeadlineExpired("the call's deadline passed while it was queued")
                self._drop(self._queue.popleft(), "expired", error)
                continue
            if not self._fill(batch, job):
                break
            self._queue.popleft()
        self._release(len(batch.items))
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

    def _drop(self, job: _Job, reason: str, error: Exception | None = None) -> None:
        """Forget a call before its remaining texts reach the model."""
        waiting = len(job.tokens) - job.scheduled
        self._release(waiting)
        self._metrics.dropped.labels(reason).inc(waiting)
        if error is not None and not job.future.done():
            job.future.set_exception(error)
        job.scheduled = len(job.tokens)

    async def _run_batch(self, batch: _Batch) -> None:
        tokens = [job.tokens[index] for job, index in batch.items]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            vectors = await loop.run_in_executor(self._infer_pool, self._model.embed, tokens)
        except Exception as exc:
            log.exception("inference_failed", batch_size=len(tokens))
            self._metrics.errors.labels("inference").inc()
            failure = InferenceFailed(f"the model failed on a batch of {len(tokens)} texts")
            failure.__cause__ = exc
            for job, _ in batch.items:
                if not job.future.done():
                    job.future.set_exception(failure)
            return
        self._metrics.inference_duration.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(tokens))
        self._metrics.tokens.inc(sum(len(item.ids) for item in tokens))
        for (job, index), vector in zip(batch.items, vectors, strict=True):
            self._deliver(job, index, vector)

    def _deliver(self, job: _Job, index: int, vector: Vectors) -> None:
        if job.future.done():
            return
        if job.vectors is None:
            job.vectors = np.empty((len(job.tokens), vector.shape[-1]), dtype=np.float32)
        job.vectors[index] = vector
        job.finished += 1
        if job.finished == len(job.tokens):
            job.future.set_result(job.vectors)
