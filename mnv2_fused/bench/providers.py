"""The implementations compared, one list for the command line and the benchmarks: each makes a
no-argument callable that runs a model (torchvision's, unconverted) on an input."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .measure import held_bytes
from .onnx_runtime import onnxruntime_missing, ort_runner
from .runtimes import (
    executorch_missing,
    executorch_runner,
    openvino_missing,
    openvino_runner,
    tflite_missing,
    tflite_runner,
)


def _fused(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    from .. import convert

    # channels_last weights too: the layers that stay PyTorch's (a stem or head it does not fuse)
    # then run its fast channels_last convolutions, and hand channels_last tensors to the blocks.
    fused = convert(copy.deepcopy(model)).to(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        return fused(x)

    run.held_bytes = lambda: held_bytes(fused)  # its arena: see peak_cpu_bytes
    return run


def _eager(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: model(x)


def _eager_channels_last(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    return lambda: m(xc)


def _onnxruntime(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return ort_runner(model, x, torch.get_num_threads())


def _threads(runner):
    return lambda model, x: runner(model, x, torch.get_num_threads())


def _compile(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    compiled = torch.compile(copy.deepcopy(model))
    return lambda: compiled(x)


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    make: Callable[[nn.Module, torch.Tensor], Callable[[], object]]
    missing: Callable[[], Optional[str]] = lambda: None  # why it cannot run here, e.g. a package not installed
    measures_memory: bool = True  # peak CPU memory is visible to torch's profiler


PROVIDERS = {p.name: p for p in [
    Provider("fused", "mnv2_fused", _fused),
    Provider("eager_nchw", "torchvision eager", _eager),
    Provider("eager_channels_last", "torchvision eager, channels_last", _eager_channels_last),
    Provider("onnxruntime", "onnxruntime", _onnxruntime, onnxruntime_missing, measures_memory=False),
    Provider("compile", "torch.compile", _compile),
]}

# The other CPU runtimes (the `anchors` extra): optional providers of the benchmarks.
ANCHORS = {p.name: p for p in [
    Provider("openvino", "OpenVINO", _threads(openvino_runner), openvino_missing, measures_memory=False),
    Provider("tflite", "TFLite (XNNPACK)", _threads(tflite_runner), tflite_missing, measures_memory=False),
    Provider("executorch", "ExecuTorch (XNNPACK)", _threads(executorch_runner), executorch_missing,
             measures_memory=False),
]}
