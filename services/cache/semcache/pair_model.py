"""The pair verifier's model: a cross-encoder that reads two questions together.

An int8 ONNX export of a MiniLM-L6 cross-encoder trained by
`bench/train_verifier.py` (it ships in `verifier_model/` beside this module),
run by ONNX Runtime with the model's own `tokenizer.json` through the
`tokenizers` library: no torch. Input "[CLS] a [SEP] b [SEP]", cut to
`max_tokens` word pieces (the longer side first), out one logit; the score is
its sigmoid, the probability that the two mean the same.

The pure part (tokenising, padding, the session call) is here; when and how
often it runs under load is `semcache.pair_verify`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "verifier_model"
MAX_TOKENS = 128


def _sigmoid(z: float) -> float:
    if z < -60.0:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


class PairModel:
    """Same-meaning probability of question pairs; thread-safe (ONNX Runtime sessions are)."""

    def __init__(
        self,
        onnx_path: Path = MODEL_DIR / "model.onnx",
        tokenizer_json: Path = MODEL_DIR / "tokenizer.json",
        *,
        threads: int = 1,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens, strategy="longest_first")
        self._unknown = self._tokenizer.token_to_id("[UNK]")

    def unjudgeable(self, a: str, b: str) -> str | None:
        """Why the model cannot see the whole pair ("too_long", "unknown_tokens"), or None."""
        encoding = self._tokenizer.encode(a, b)
        if encoding.overflowing:
            return "too_long"
        if self._unknown is not None and self._unknown in encoding.ids:
            return "unknown_tokens"
        return None

    def _encode(self, a: Sequence[str], b: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch_fast(list(zip(a, b, strict=True)))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = e.ids, e.type_ids, 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: v for k, v in feeds.items() if k in self._inputs}

    def scores(self, query: str, candidates: Sequence[str]) -> list[float]:
        """P(same meaning) of `query` against each candidate, in one batch."""
        if not candidates:
            return []
        return self.score_pairs([query] * len(candidates), candidates)

    def score_pairs(self, a: Sequence[str], b: Sequence[str], batch: int = 32) -> list[float]:
        """P(same meaning) of each (a[i], b[i]); batches of similar length."""
        order = sorted(range(len(a)), key=lambda i: len(a[i]) + len(b[i]))
        out = [0.0] * len(a)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            feeds = self._encode([a[i] for i in rows], [b[i] for i in rows])
            logits = self._session.run(None, feeds)[0].reshape(-1)
            for i, z in zip(rows, logits, strict=True):
                out[i] = _sigmoid(float(z))
        return out
