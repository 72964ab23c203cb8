"""ONNX Runtime as a comparison point: export a model with torch.onnx and run it on the CPU."""
from __future__ import annotations

import io
import warnings
from typing import Callable, Optional

import torch


def onnxruntime_missing() -> Optional[str]:
    """None when ONNX Runtime can be used here, else what to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'mnv2_fused[bench]')"
    return None


def ort_runner(model: torch.nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    """A no-argument callable running ``model`` on ``example`` in ONNX Runtime's
    CPUExecutionProvider with ``threads`` intra-op threads."""
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
