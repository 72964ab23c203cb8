"""A converted MobileNetV2's folded weights in transparent huge pages (csrc/cpu/huge_pages.h,
mnv2_fused/network.py: _in_huge_pages): one mapping holds the dense float32 ones, the blocks'
caches hold those same copies (not a second set), the outputs are those of weights left where
they were folded, to the bit, and an edit after the move folds and moves them again."""
import copy

import pytest
import torch
import torchvision
from helpers import HUGE_PAGE, huge_pages_offered, make_input, randomize_bn, rel_err

from mnv2_fused import convert
from mnv2_fused.network import NetworkWeights, _in_huge_pages


@pytest.fixture(scope="module")
def reference_net():
    return randomize_bn(torchvision.models.mobilenet_v2(), seed=5).eval()


def tensors_of(w) -> list:
    """The tensors of a fold (NetworkWeights and the tuples inside it), in order."""
    if isinstance(w, torch.Tensor):
        return [w]
    if isinstance(w, tuple):
        return [t for item in w for t in tensors_of(item)]
    return []


def moved(t: torch.Tensor) -> bool:
    """Whether the copy into huge pages takes t: dense float32 (the depthwise taps' permuted
    layout included), not empty."""
    dense = t.numel() == t.untyped_storage().nbytes() // t.element_size() and t.storage_offset() == 0
    return dense and t.dtype == torch.float32 and t.numel() > 0


def forwards(net, x, n=3):
    with torch.no_grad():
        for _ in range(n):
            out = net(x)
    return out


needs_huge_pages = pytest.mark.skipif(not huge_pages_offered(),
                                      reason="the system's transparent huge pages are off or absent")


@needs_huge_pages
def test_weights_lie_in_one_huge_page_mapping(reference_net, monkeypatch):
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "1")
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 224, 224), "channels_last", seed=1)
    out = forwards(net, x)
    w: NetworkWeights = net._bound._value
    inside = [t for t in tensors_of(w) if moved(t)]
    begin = min(t.data_ptr() for t in inside)
    end = max(t.data_ptr() + t.numel() * 4 for t in inside)
    floats = sum(t.numel() for t in inside)
    assert begin % HUGE_PAGE == 0  # the mapping's start
    assert floats * 4 <= end - begin <= floats * 4 + 64 * len(inside)  # one after another, on cache lines
    assert any(not t.is_contiguous() for t in inside)  # the depthwise taps, strides kept
    for t in inside:
        assert t.data_ptr() % 64 == 0
    # The blocks' caches hold the network's copies.
    for m, (bw, _, _) in zip(list(net.features)[2:-1], w.blocks):
        assert [t.data_ptr() for t in tensors_of(m.folded_weights())] == [t.data_ptr() for t in tensors_of(bw)]
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "0")
    left = convert(copy.deepcopy(reference_net))
    assert torch.equal(out, forwards(left, x))
    assert rel_err(out, reference_net(x)) <= 1e-4


@needs_huge_pages
def test_an_edit_after_the_move_folds_and_moves_again(reference_net, monkeypatch):
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "1")
    ref = copy.deepcopy(reference_net)
    net = convert(copy.deepcopy(reference_net))
    x = make_input((1, 3, 224, 224), "channels_last", seed=2)
    forwards(net, x)
    before = net._bound._value
    with torch.no_grad():
        for m in (ref, net):
            m.features[5].conv[2].weight.mul_(1.5)  # block 4's projection BN
            m.classifier[1].bias.add_(0.25)
        out = forwards(net, x, n=2)
        assert rel_err(out, ref(x)) <= 1e-4
    after = net._bound._value
    assert after is not before
    old = {t.data_ptr() for t in tensors_of(before)}
    assert not any(t.data_ptr() in old for t in tensors_of(after) if moved(t))  # all in the new mapping
    assert [t.data_ptr() for t in tensors_of(net.features[5].folded_weights())] == \
        [t.data_ptr() for t in tensors_of(after.blocks[3][0])]


def test_switched_off_the_weights_stay_where_they_were_folded(reference_net, monkeypatch):
    monkeypatch.setenv("MNV2_FUSED_HUGE_PAGES", "0")
    net = convert(copy.deepcopy(reference_net))
    forwards(net, make_input((1, 3, 224, 224), "channels_last"), n=1)
    w = net._bound._value
    assert all(a is b for a, b in zip(tensors_of(_in_huge_pages(w)), tensors_of(w)))
