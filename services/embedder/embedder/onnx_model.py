"""The fast backend: the int8 ONNX export on ONNX Runtime, pooled like sentence-transformers.

Threads, deliberately: the machine this runs on has two cores, and the same
process also runs the gRPC event loop and the tokenizer. ONNX Runtime fixes a
session's thread count, so there are two sessions over the same file:

- small batches (under ``batch_threads_from`` padded tokens: a lone call, a
  few short texts) run on one intra-op thread. Splitting 20 rows of work
  across two threads costs more than it saves: measured here, a single
  sentence took 3.7 ms on two threads against 2.8 ms on one;
- large batches (what forms under load) run on ``batch_threads`` threads (two
  by default). A batch of 16 short sentences has enough work per operator:
  1.1 ms per sentence on two threads against 1.8 ms on one, for about 10% more
  CPU (2.0 ms against 1.8 ms per sentence). The event loop still gets its
  share of the second core: the pool thread sleeps whenever it has no work.

Spinning stays off in both: a spinning pool thread takes the core the event
loop needs (measured: with spinning, 32 callers got 320-410 sentences/s
against 580-660 without; a lone call gained 0.5 ms at the median but lost 3 ms
at the 90th percentile, when the spinning thread was descheduled). Inter-op
parallelism is useless for this strictly sequential graph. Scale with more
replicas, or raise the thread counts on a larger node.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from embedder.model import (
    DIMENSION,
    MAX_TOKENS,
    MODEL_NAME,
    ModelInfo,
    TokenizedText,
    Vectors,
    WordPieceTokenizer,
)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxModel:
    def __init__(
        self,
        onnx_path: Path,
        tokenizer_json: Path,
        *,
        threads: int = 1,
        batch_threads: int = 1,
        batch_threads_from: int = 128,
    ) -> None:
        self._session = ort.InferenceSession(
            str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        # A second session with more threads for batches of at least
        # ``batch_threads_from`` padded tokens: ONNX Runtime fixes the thread
        # count per session, and a small batch runs best on one.
        self._threads = threads
        self._wide: ort.InferenceSession | None = None
        self._wide_threads = batch_threads
        self._wide_from = batch_threads_from
        if batch_threads > threads:
            self._wide = ort.InferenceSession(
                str(onnx_path), session_options(batch_threads), providers=["CPUExecutionProvider"]
            )
        self._tokenizer = WordPieceTokenizer(tokenizer_json, MAX_TOKENS)
        self._info = ModelInfo(MODEL_NAME, DIMENSION, MAX_TOKENS, "onnx-int8")

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self._tokenizer(texts)

    def threads_for(self, padded_tokens: int) -> int:
        """Intra-op threads a batch of ``padded_tokens`` (texts x the longest) runs on."""
        if self._wide is not None and padded_tokens >= self._wide_from:
            return self._wide_threads
        return self._threads

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        ids, mask = pad(batch)
        session = self._session
        if self._wide is not None and self.threads_for(ids.size) > self._threads:
            session = self._wide
        (hidden,) = session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        return mean_pool_normalize(hidden, mask)


def pad(batch: Sequence[TokenizedText]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad with id 0 ([PAD]) to the longest text; the mask marks real tokens."""
    longest = max(len(item.ids) for item in batch)
    ids = np.zeros((len(batch), longest), dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, item in enumerate(batch):
        ids[row, : len(item.ids)] = item.ids
        mask[row, : len(item.ids)] = 1
    return ids, mask


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> Vectors:
    """sentence-transformers' Pooling(mean) then Normalize: average real tokens, unit length."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    mean = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    vectors: Vectors = (mean / np.clip(norms, 1e-12, None)).astype(np.float32)
    return vectors
