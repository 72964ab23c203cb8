"""A torchvision MobileNetV2 whose whole inference path is fused: the stem with the first block,
the inverted-residual blocks, and the last 1x1 convolution with the average pool. convert() turns
a torchvision mobilenet_v2 into one in place; attributes and state_dict keys stay the same."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2

from . import fold_cache
from ._extension import extension_loaded
from .fold_cache import FastCall, FoldCache
from .layout import fold_for_kernel, matrix_layout
from .module import FusedInvertedResidual
from .ops import inverted_residual
from .stem_head import cpu_kernel_runs, fold_head, fold_stem, head_pool, linear, stem_block


def _is_plain_stem(m: nn.Module) -> bool:
    conv = m[0] if isinstance(m, nn.Sequential) and len(m) == 3 else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            and conv.groups == 1 and conv.bias is None and conv.stride[0] == conv.stride[1]
            and conv.stride[0] in (1, 2) and isinstance(m[1], nn.BatchNorm2d) and isinstance(m[2], nn.ReLU6))


def _is_plain_head(m: nn.Module) -> bool:
    conv = m[0] if isinstance(m, nn.Sequential) and len(m) == 3 else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.bias is None and isinstance(m[1], nn.BatchNorm2d)
            and isinstance(m[2], nn.ReLU6))


def _is_first_block(m: nn.Module) -> bool:
    conv = getattr(m, "conv", None)
    return conv is not None and len(conv) == 3 and not getattr(m, "use_res_connect", True)


def fusable(model: nn.Module) -> bool:
    """Whether ``model`` has torchvision MobileNetV2's stem, first (expand-free) block, fused
    blocks and head."""
    f = getattr(model, "features", None)
    if not (isinstance(model, MobileNetV2) and isinstance(f, nn.Sequential) and len(f) >= 3):
        return False
    mods = list(f)
    return (_is_plain_stem(mods[0]) and _is_first_block(mods[1]) and _is_plain_head(mods[-1])
            and all(isinstance(m, FusedInvertedResidual) for m in mods[2:-1]))


def _plain_classifier(m: nn.Module) -> bool:
    # torchvision's Sequential(Dropout, Linear): at inference, just the Linear.
    return (isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Dropout)
            and isinstance(m[1], nn.Linear) and m[1].bias is not None)


def _fold_network(features: nn.Sequential, classifier: nn.Module) -> tuple:
    """Every stage's folded weights, in the layout of their device's kernel, and the same weights
    as the arguments of the one-call op."""
    mods = list(features)
    stem, first, head = mods[0], mods[1], mods[-1]
    blocks = tuple((fold_for_kernel(m.conv), m.stride, m.use_res_connect) for m in mods[2:-1])
    linear_w = ((matrix_layout(classifier[1].weight), classifier[1].bias.detach())
                if _plain_classifier(classifier) else None)
    stem_w, stem_stride, stride = fold_stem(stem, first.conv), stem[0].stride[0], first.conv[0][0].stride[0]
    head_w = fold_head(head)
    one_call = (list(stem_w), stem_stride, stride, [t for blk in blocks for t in blk[0]], [blk[1] for blk in blocks],
                [int(blk[2]) for blk in blocks], list(head_w), [] if linear_w is None else list(linear_w))
    return (stem_w, stem_stride, stride), blocks, head_w, linear_w, one_call


class FusedMobileNetV2(MobileNetV2):
    """torchvision's MobileNetV2 (same attributes, submodules and state_dict keys) whose inference
    forward runs three fused stages on the CPU:

    - the stem (3x3 conv, BN, ReLU6) together with ``features[1]``, so the (32, H/2, W/2) tensor
      never exists;
    - ``features[2:-1]``, the fused blocks, handing channels_last tensors to each other;
    - ``features[-1]`` (1x1 conv to 1280, BN, ReLU6) together with the global average pool, so the
      (1280, H/32, W/32) tensor never exists either; then the classifier's Linear (Dropout is the
      identity at inference), with its weight cached in the layout the kernel streams.

    Training, or a forward that needs gradients, runs torchvision's own forward. ``model.features``
    itself stays torchvision's unfused Sequential. Not constructed directly: see ``convert``.
    """

    def _init_fused(self) -> None:
        # One cache for the whole network: a forward checks its tensors once, not per block.
        self._net_cache = FoldCache(_fold_network)
        self._fusable_for: tuple = ()
        self._fast = FastCall()

    def _fusable(self) -> bool:
        # Re-checked only when a stage is replaced.
        mods = tuple(self.features) if isinstance(self.features, nn.Sequential) else ()
        key = tuple(map(id, mods))
        if self._fusable_for != key:
            self._fusable_for, self._fusable_now = key, fusable(self)
        return self._fusable_now

    def _needs_reference(self, x: torch.Tensor) -> bool:
        if self.training or not self._fusable():
            return True
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        # The fast path (see FastCall): the previous forward's checks still hold (nothing
        # registered or assigned anywhere, no backend set since); C++ checks x and the weights'
        # versions.
        y = self._fast.run(x, self.training)
        return y if y is not None else self._checked_forward(x)

    def _checked_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._needs_reference(x):
            return super()._forward_impl(x)
        changes = fold_cache.changes()  # read before the checks it vouches for
        value, snapshot = self._net_cache.get_with_snapshot(self.features, self.classifier)
        (stem_w, stem_stride, stride), blocks, head_w, linear_w, one_call = value
        # Each block's backend is read per call: it is a plain attribute the cache cannot watch.
        backends = [getattr(m, "backend", "auto") for m in list(self.features)[1:-1]]
        use_kernel = backends[0] in ("auto", "cpu")  # the stem follows the first block's choice
        if (use_kernel and all(b in ("auto", "cpu") for b in backends) and cpu_kernel_runs(x)
                and not torch.compiler.is_compiling()):
            y = torch.ops.mnv2_fused.mobilenet_v2_forward(x, *one_call)
            if linear_w is None:
                return self.classifier(y)
            if snapshot is not None and extension_loaded() and not torch.is_grad_enabled():
                from . import _C

                self._fast.bind(_C.NetworkCall(snapshot, *one_call), changes)
            return y
        y = stem_block(x, stem_w, stem_stride, stride, use_kernel)
        for (w, s, residual), backend in zip(blocks, backends[1:]):
            y = inverted_residual(y, w, s, residual, backend)
        y = head_pool(y, *head_w, use_kernel=use_kernel)
        return self.classifier(y) if linear_w is None else linear(y, *linear_w, use_kernel=use_kernel)

    def _apply(self, fn, *args, **kwargs):
        self._net_cache.clear()
        self._fast.clear()
        return super()._apply(fn, *args, **kwargs)


def fuse_network(model: MobileNetV2) -> MobileNetV2:
    """Makes ``model`` (its blocks already converted) a FusedMobileNetV2, in place."""
    if fusable(model) and type(model) is MobileNetV2:
        model.__class__ = FusedMobileNetV2
        model._init_fused()
    return model
