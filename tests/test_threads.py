"""The whole-network call on the CPU with any thread count, a count changed between calls, and
callers on several Python threads at once: torchvision's output every time."""
import copy
import threading

import pytest
import torch
import torchvision
from helpers import make_input, num_threads, randomize_bn, rel_err

from mnv2_fused import FusedMobileNetV2, convert


@pytest.fixture(scope="module")
def nets():
    reference = randomize_bn(torchvision.models.mobilenet_v2(), seed=5).eval()
    fused = convert(copy.deepcopy(reference))
    assert type(fused) is FusedMobileNetV2
    return reference, fused


def test_any_thread_count_and_changes_between_calls(nets):
    reference, fused = nets
    x = make_input((2, 3, 64, 80), "channels_last")
    with torch.no_grad():
        ref = reference(x)
        outs = {}
        for n in (1, 2, 3, 4, 2, 1, 3):
            with num_threads(n):
                outs.setdefault(n, []).append(fused(x))
    for n, (first, *again) in outs.items():
        assert rel_err(first, ref) <= 1e-4, n
        # The tiling depends on the thread count; which thread runs a tile does not change it.
        assert all(torch.equal(first, o) for o in again), n


def test_callers_on_several_threads_at_once(nets):
    _, fused = nets
    with num_threads(2):
        inputs = [make_input((1 + i % 2, 3, 48, 56), "channels_last", seed=i) for i in range(4)]
        with torch.no_grad():
            expected = [fused(x) for x in inputs]
        results, errors = {}, []

        def call(i):
            try:
                with torch.no_grad():
                    for _ in range(5):
                        out = fused(inputs[i])
                        if not torch.equal(out, expected[i]):
                            raise AssertionError(f"caller {i} got a different output")
                results[i] = True
            except BaseException as e:  # reported below, on the test's thread
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert len(results) == len(inputs)
