"""How much a text's int8 vector moves with the company it is batched with.

Dynamic quantization scales activations per batch, so the same text embedded
alone and inside a batch gives slightly different vectors. This measures the
cosine between the two over many random batch compositions (sizes 2 to 64,
QQP questions, sometimes a long text that sets the padding) and prints its
distribution; ``services/embedder/tests/test_model_parity.py`` derives its
bound from it.

    python -m bench.embedder_parity [--batches 300] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from bench.stats import percentile
from embedder.export import ensure_onnx_int8_in_child
from embedder.model import model_dir
from embedder.onnx_model import OnnxModel
from embedder.settings import EmbedderSettings

DATA = Path(__file__).resolve().parents[2] / "shared/data/qqp_dev.jsonl"


def questions(limit: int) -> list[str]:
    found: list[str] = []
    with DATA.open() as lines:
        for line in lines:
            text = json.loads(line)["text_a"].strip()
            if text:
                found.append(text)
            if len(found) >= limit:
                break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    path = ensure_onnx_int8_in_child(EmbedderSettings().cache_dir)
    model = OnnxModel(path, model_dir() / "tokenizer.json", threads=1)
    rng = random.Random(args.seed)
    texts = questions(3000)
    pool = texts[:600]
    alone = {text: model.embed(model.tokenize([text]))[0] for text in pool}
    cosines: list[float] = []
    started = time.monotonic()
    for _ in range(args.batches):
        batch = rng.sample(pool, rng.choice([2, 4, 8, 16, 32, 64]))
        if rng.random() < 0.3:  # a long neighbour: more padding, wider activations
            batch[0] = " ".join(rng.sample(texts, 12))
        for text, vector in zip(batch, model.embed(model.tokenize(batch)), strict=True):
            if text in alone:
                cosines.append(float(vector @ alone[text]))
    c = np.array(cosines)
    print(f"{len(c)} texts in {args.batches} batches ({time.monotonic() - started:.0f} s)")
    print("| min | 0.1% | 1% | median | mean |")
    print("|---|---|---|---|---|")
    q = [percentile(c, p, "linear") for p in (0.1, 1, 50)]
    print(f"| {c.min():.4f} | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {c.mean():.4f} |")


if __name__ == "__main__":
    main()
