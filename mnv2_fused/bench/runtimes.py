"""Other CPU runtimes as comparison points, each optional: OpenVINO, TFLite with XNNPACK (the model
converted by litert-torch, run by ai-edge-litert), and ExecuTorch with its XNNPACK delegate.

Each runner converts the (unconverted, torchvision) model, checks its output against PyTorch's on
the same input before anything is timed, and returns a no-argument callable. ``*_missing()`` says
what to install when a runtime is absent (the `anchors` extra)."""
from __future__ import annotations

import importlib
import os
import tempfile
from typing import Callable, Optional

import numpy as np
import torch

# Relative error a runtime's float32 output may have against PyTorch's before it is timed at all.
OUTPUT_TOLERANCE = 1e-4


def _missing(*modules: str) -> Optional[str]:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{name} is not installed (pip install 'mnv2_fused[anchors]')"
    return None


def openvino_missing() -> Optional[str]:
    return _missing("openvino")


def tflite_missing() -> Optional[str]:
    return _missing("litert_torch", "ai_edge_litert")


def executorch_missing() -> Optional[str]:
    return _missing("executorch")


def checked(name: str, run: Callable[[], object], model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """run, after its output has matched the model's own on x (RuntimeError otherwise)."""
    with torch.no_grad():
        expected = model(x).double()
    out = run()
    got = torch.as_tensor(np.asarray(out[0] if isinstance(out, (list, tuple)) else out)).double()
    err = ((got.reshape(expected.shape) - expected).norm() / expected.norm()).item()
    if not err <= OUTPUT_TOLERANCE:
        raise RuntimeError(f"{name}'s output differs from PyTorch's by {err:.2e} (relative); not timed")
    return run


def openvino_runner(model: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    """OpenVINO's CPU plugin, float32 (its default would pick bf16 on CPUs that have it), latency mode."""
    import openvino as ov

    core = ov.Core()
    with torch.no_grad():
        ov_model = ov.convert_model(model, example_input=x)
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                    "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    feed = {0: x.contiguous().numpy()}
    return checked("OpenVINO", lambda: request.infer(feed)[0], model, x)


def tflite_runner(model: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    """The model converted by litert-torch, run by LiteRT's interpreter with the XNNPACK delegate."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    with torch.no_grad():
        edge = litert_torch.convert(model.eval(), (x,))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        edge.export(path)
        with open(path, "rb") as f:
            content = f.read()
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    data = x.contiguous().numpy()

    def run():
        interpreter.set_tensor(inp["index"], data)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return checked("TFLite", run, model, x)


def executorch_runner(model: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    """ExecuTorch with the whole graph lowered to its XNNPACK delegate."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    with torch.no_grad():
        exported = torch.export.export(model.eval(), (x,))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    loaded = Runtime.get().load_program(program.buffer)
    method = loaded.load_method("forward")
    try:  # the delegate's thread pool; older releases size it to the cores
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):
        pass
    inputs = [x.contiguous()]

    def run():
        # The loaded program must outlive its method (the method points into it).
        return method.execute(inputs)[0] if loaded is not None else None

    return checked("ExecuTorch", run, model, x)
