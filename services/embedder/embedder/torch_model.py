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
    def __init__(self, model_dir: Path, *, threads: int = 1) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        # Same reasoning as the ONNX backend: one core for inference, one for the loop.
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

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        vectors = self._model.encode(
            [item.text for item in batch],
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
