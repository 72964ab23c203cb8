"""ONNX Runtime as a comparison point: export a model with torch.onnx and run it on the CPU."""
from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

import torch


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_runner(model: torch.nn.Module, example: torch.Tensor, threads: int) -> Optional[Callable[[], object]]:
    """A no-argument callable running `model` on `example` in ONNX Runtime's CPUExecutionProvider
    with `threads` intra-op threads, or None when onnxruntime is not installed."""
    if not onnxruntime_available():
        return None
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": example.contiguous().numpy()}
    return lambda: session.run(None, feed)
