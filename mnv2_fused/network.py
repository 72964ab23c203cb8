"""A torchvision MobileNetV2 whose whole inference path is fused: the stem with the first block,
the inverted-residual blocks, and the last 1x1 convolution with the average pool. convert() turns
a torchvision mobilenet_v2 into one in place; attributes and state_dict keys stay the same."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2

from . import backends
from ._extension import extension_loaded
from .bound import Bound, generation, refresh_after_load
from .layout import matrix_layout
from .module import FusedInvertedResidual, check_input
from .ops import head_pool, linear, run_block, stem_block
from .stem_head import StemWeights, fold_head, fold_stem
from .tracing import is_fx_proxy


def _is_plain_stem(m: nn.Module) -> bool:
    conv = m[0] if isinstance(m, nn.Sequential) and len(m) == 3 else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            and conv.groups == 1 and conv.bias is None and conv.dilation == (1, 1)
            and conv.stride[0] == conv.stride[1] and conv.stride[0] in (1, 2)
            and isinstance(m[1], nn.BatchNorm2d) and type(m[2]) is nn.ReLU6)


def _is_plain_head(m: nn.Module) -> bool:
    conv = m[0] if isinstance(m, nn.Sequential) and len(m) == 3 else None
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.bias is None and isinstance(m[1], nn.BatchNorm2d)
            and type(m[2]) is nn.ReLU6)


def fusable(model: nn.Module) -> bool:
    """Whether ``model`` has torchvision MobileNetV2's stem, an expand-free first block, fused
    blocks and head."""
    f = getattr(model, "features", None)
    if not (isinstance(model, MobileNetV2) and isinstance(f, nn.Sequential) and len(f) >= 3):
        return False
    mods = list(f)
    first = mods[1]
    return (_is_plain_stem(mods[0]) and _is_plain_head(mods[-1])
            and all(isinstance(m, FusedInvertedResidual) for m in mods[1:-1])
            and len(first.conv) == 3 and not first.use_res_connect)


def _plain_classifier(m: nn.Module) -> bool:
    # torchvision's Sequential(Dropout, Linear): at inference, just the Linear.
    return (isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Dropout)
            and isinstance(m[1], nn.Linear) and m[1].bias is not None)


class NetworkWeights(NamedTuple):
    """Every stage's folded weights, in the layout of their device's kernels."""

    stem: StemWeights  # the stem with the first block
    stem_stride: int
    stride: int  # the first block's
    blocks: tuple  # (FoldedWeights, stride, residual) of features[2:-1]
    head: tuple  # (w, b) of the last 1x1 convolution
    classifier: Optional[tuple]  # (w, b) of the Linear, or None when the classifier is not torchvision's

    def op_arguments(self) -> tuple:
        """The arguments of torch.ops.mnv2_fused.mobilenet_v2_forward after x."""
        return (list(self.stem), self.stem_stride, self.stride, [t for w, _, _ in self.blocks for t in w],
                [s for _, s, _ in self.blocks], [int(r) for _, _, r in self.blocks], list(self.head),
                [] if self.classifier is None else list(self.classifier))


def _fold_network(features: nn.Sequential, classifier: nn.Module) -> NetworkWeights:
    # The blocks' own caches hold their folds: only a block whose tensors changed folds again.
    mods = list(features)
    stem, first = mods[0], mods[1]
    blocks = tuple((m.folded_weights(), m.stride, m.use_res_connect) for m in mods[2:-1])
    linear_w = ((matrix_layout(classifier[1].weight), classifier[1].bias.detach())
                if _plain_classifier(classifier) else None)
    w = NetworkWeights(fold_stem(stem, first.folded_weights()), stem[0].stride[0], first.stride, blocks,
                       fold_head(mods[-1]), linear_w)
    if torch.compiler.is_compiling() or not extension_loaded():
        return w
    # Every forward streams the weights through: in huge pages, as the arena (README, How the CPU
    # kernel works). The blocks' caches then hold the same copies, not a second set.
    moved = _in_huge_pages(w)
    for m, (old, _, _), (new, _, _) in zip(mods[2:-1], w.blocks, moved.blocks):
        m.rehome_folded_weights(old, new)
    return moved


def _in_huge_pages(w: NetworkWeights) -> NetworkWeights:
    """``w`` with its float32 CPU weights copied into one mapping of huge pages (_C.copies_in_huge_pages),
    or as it is where they do not go there."""
    from . import _C

    tensors = []

    def collect(o):
        if isinstance(o, torch.Tensor):
            tensors.append(o)
        elif isinstance(o, tuple):
            for item in o:
                collect(item)

    collect(w)
    copies = iter(_C.copies_in_huge_pages(tensors))

    def rebuild(o):
        if isinstance(o, torch.Tensor):
            return next(copies)
        if isinstance(o, tuple):
            items = [rebuild(item) for item in o]
            return type(o)(*items) if hasattr(o, "_fields") else tuple(items)  # NamedTuples too
        return o

    return rebuild(w)


class FusedMobileNetV2(MobileNetV2):
    """torchvision's MobileNetV2 (same attributes, submodules and state_dict keys) whose inference
    forward runs three fused stages:

    - the stem (3x3 conv, BN, ReLU6) together with ``features[1]``, so the (32, H/2, W/2) tensor
      never exists;
    - ``features[2:-1]``, the fused blocks, handing channels_last tensors to each other;
    - ``features[-1]`` (1x1 conv to 1280, BN, ReLU6) together with the global average pool, so the
      (1280, H/32, W/32) tensor never exists either; then the classifier's Linear (Dropout is the
      identity at inference).

    On CPU float32 input with every block on "auto" or "cpu", the whole forward is one call into the
    library. Training, gradients, ONNX export and TorchScript run torchvision's forward (the blocks
    decide for themselves); FX traces torchvision's forward with each fused block as one call.
    ``model.features`` itself stays torchvision's Sequential. Not constructed directly: see
    ``convert``.

    Those one-call forwards lay their activations and scratch in an arena the model keeps between
    forwards (``workspace_bytes()``: about the peak of one forward, 1.2 MiB at batch 1 and 224x224,
    held in one 2 MiB huge page unless ``MNV2_FUSED_HUGE_PAGES=0``), as inference runtimes do, so a
    forward allocates only its output.
    """

    def _init_fused(self) -> None:
        self._bound = Bound(_fold_network)
        self.register_load_state_dict_post_hook(refresh_after_load)

    def refresh(self) -> None:
        """Drop the cached folded weights of the network and its blocks."""
        self._bound.clear()
        for m in self.modules():
            if isinstance(m, FusedInvertedResidual):
                m.refresh()

    def workspace_bytes(self) -> int:
        """Bytes the model keeps between forwards for their activations and scratch: sized after the
        first forward of a shape (the second one-call forward) to the most any of its stages holds,
        resized when a forward needs more or less than half of it; 0 when none is held. From 1 MiB
        up it is rounded up to whole 2 MiB huge pages where Linux offers them, and counted so
        (``MNV2_FUSED_HUGE_PAGES=0``: at its exact size). It counts the weight copies the stages
        made ready for that shape hold too (the stem's packed 3x3 weight: 3.4 KiB)."""
        call = self._bound.call()
        return call.workspace_bytes() if call is not None else 0

    def release_workspace(self) -> None:
        """Frees the memory ``workspace_bytes()`` counts; the next forward sizes it again."""
        call = self._bound.call()
        if call is not None:
            call.release_workspace()

    def _apply(self, fn, *args, **kwargs):
        self._bound.clear()
        return super()._apply(fn, *args, **kwargs)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return self._torchvision_forward(x)
        y = self._bound.run(x, self.training)
        return y if y is not None else self._dispatch(x)

    def _torchvision_forward(self, x: torch.Tensor) -> torch.Tensor:
        # MobileNetV2._forward_impl, written out: TorchScript cannot call super().
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)

    def _dispatch(self, x: torch.Tensor) -> torch.Tensor:
        if is_fx_proxy(x) or not fusable(self):
            # Traced by FX, or a stage replaced by something else: torchvision's forward, in which
            # every fused block still runs (or is traced as) one fused call.
            return super()._forward_impl(x)
        blocks = list(self.features)[1:-1]
        stem = self.features[0][0]
        check_input(x, "FusedMobileNetV2", stem.in_channels, stem.weight)
        seen = generation()  # read before the checks a binding relies on
        chosen = backends.network_route([b.backend for b in blocks], x, self.training, self.parameters)
        if chosen == backends.UNFUSED:
            return super()._forward_impl(x)
        w: NetworkWeights = self._bound.weights(self.features, self.classifier)
        if chosen == "network":
            y = torch.ops.mnv2_fused.mobilenet_v2_forward(x, *w.op_arguments())
            if w.classifier is None:
                return self.classifier(y)
            if backends.may_bind(chosen):
                self._bound.bind(self._network_call, seen)
            return y
        # Stage by stage: each block on its own back end; the stem (fused with the first block) and
        # the head on the CPU kernels when the first block's back end is the CPU one.
        use_kernel = backends.select_backend(blocks[0].backend, x) == "cpu"
        y = stem_block(x, w.stem, w.stem_stride, w.stride, use_kernel)
        for block, (bw, s, residual) in zip(blocks[1:], w.blocks):
            y = run_block(y, bw, s, residual, backends.select_backend(block.backend, y))
        y = head_pool(y, *w.head, use_kernel=use_kernel)
        return self.classifier(y) if w.classifier is None else linear(y, *w.classifier, use_kernel=use_kernel)

    def _network_call(self, weights: NetworkWeights, versions):
        from . import _C

        return _C.NetworkCall(versions, self.features[0][0].in_channels, *weights.op_arguments())


def fuse_network(model: MobileNetV2) -> bool:
    """Makes ``model`` (its blocks already converted) a FusedMobileNetV2, in place; whether it could."""
    if isinstance(model, FusedMobileNetV2):
        return True
    if fusable(model) and type(model) is MobileNetV2:
        model.__class__ = FusedMobileNetV2
        model._init_fused()
        return True
    return False

