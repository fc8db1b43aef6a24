"""The reference backend: sentence-transformers on PyTorch, exactly as the model card runs it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedder.model import (
    DIMENSION,
    MAX_TOKENS,
    MODEL_NAME,
    ModelInfo,
    TokenizedText,
    Vectors,
    WordPieceTokenizer,
)


class TorchModel:
    def __init__(
        self,
        model_dir: Path,
        *,
        threads: int = 1,
        batch_threads: int = 1,
        batch_threads_from: int = 128,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        # Same reasoning as the ONNX backend: one core for inference, one for the
        # loop, and ``batch_threads`` for a batch of at least ``batch_threads_from``
        # padded tokens. torch's thread count is global: set it before each run
        # whose count differs from the last one (a cheap call).
        self._torch = torch
        self._threads = threads
        self._batch_threads = max(batch_threads, threads)
        self._batch_threads_from = batch_threads_from
        self._current_threads = threads
        torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(model_dir), device="cpu")
        self._model.max_seq_length = MAX_TOKENS
        self._tokenizer = WordPieceTokenizer(model_dir / "tokenizer.json", MAX_TOKENS)
        self._info = ModelInfo(MODEL_NAME, DIMENSION, MAX_TOKENS, "torch")

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self._tokenizer(texts)

    def threads_for(self, padded_tokens: int) -> int:
        """Intra-op threads a batch of ``padded_tokens`` (texts x the longest) runs on."""
        if padded_tokens >= self._batch_threads_from:
            return self._batch_threads
        return self._threads

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        threads = self.threads_for(len(batch) * max(len(item.ids) for item in batch))
        if threads != self._current_threads:
            self._torch.set_num_threads(threads)
            self._current_threads = threads
        vectors = self._model.encode(
            [item.text for item in batch],
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
