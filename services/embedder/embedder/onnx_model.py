"""The fast backend: the int8 ONNX export on ONNX Runtime, pooled like sentence-transformers.

Threads, deliberately: the machine this runs on has two cores, and the same
process also runs the gRPC event loop and the tokenizer. One intra-op thread
keeps a core free for them; measured here, two intra-op threads were no faster
for a batch of 32 (the second thread competes with the loop for the other core)
and, with spinning on, two to three times slower. Spinning is off for the same
reason: an idle pool thread that spins steals the loop's core. Inter-op
parallelism is useless for this strictly sequential graph. Scale with more
replicas (or raise ``EMBEDDER_INTRA_OP_THREADS`` on a larger node).
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
    def __init__(self, onnx_path: Path, tokenizer_json: Path, *, threads: int = 1) -> None:
        self._session = ort.InferenceSession(
            str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._tokenizer = WordPieceTokenizer(tokenizer_json, MAX_TOKENS)
        self._info = ModelInfo(MODEL_NAME, DIMENSION, MAX_TOKENS, "onnx-int8")

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self._tokenizer(texts)

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        ids, mask = pad(batch)
        (hidden,) = self._session.run(
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
