"""How a fused module shows itself to torch.fx.

FX's symbolic tracer (and torchvision's create_feature_extractor, built on it) runs forward with
Proxy inputs; a fused module's forward branches on its input, which a Proxy cannot answer. So a
fused module traced inside a model records itself as one call_module node, as FX does for its own
leaf modules: the traced graph calls the module, which runs the fused kernels."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def is_fx_proxy(x: object) -> bool:
    return isinstance(x, torch.fx.Proxy)


def fx_leaf_call(module: nn.Module, x: torch.fx.Proxy, trace_through: Callable[[torch.fx.Proxy], object]) -> object:
    """A call_module node for ``module`` applied to ``x``; ``trace_through(x)`` (its layers, traced
    op by op) when ``module`` is the root being traced, which a node cannot call."""
    tracer = x.tracer
    path = tracer.path_of_module(module)
    if not path:
        return trace_through(x)
    return tracer.create_proxy("call_module", path, (x,), {})
