"""The whole-network call on the CPU with any thread count, a count changed between calls,
callers on several Python threads at once, its stages on all threads or one fewer, and another
process busy on a core: torchvision's output every time."""
import copy
import subprocess
import sys
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


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mode", ["reduced", "auto", ""])
def test_reduced_chain_gives_the_full_teams_output(nets, threads, mode, monkeypatch):
    reference, fused = nets
    x = make_input((2, 3, 64, 80), "channels_last")
    with torch.no_grad(), num_threads(threads):
        ref = reference(x)
        monkeypatch.setenv("MNV2_FUSED_CHAIN", "full")
        full = fused(x)
        monkeypatch.setenv("MNV2_FUSED_CHAIN", mode)
        out = fused(x)
    assert rel_err(full, ref) <= 1e-4
    # One thread fewer (on two, the calling thread alone), the stages keep the tiling planned for
    # all of them: the very same output.
    assert torch.equal(out, full)


def test_unknown_chain_mode_is_refused(nets, monkeypatch):
    _, fused = nets
    monkeypatch.setenv("MNV2_FUSED_CHAIN", "sometimes")
    with torch.no_grad(), num_threads(2), pytest.raises(ValueError, match="MNV2_FUSED_CHAIN must be full, reduced"):
        fused(make_input((1, 3, 32, 32), "channels_last"))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mode", ["full", "reduced"])
def test_error_in_a_stage_leaves_the_team_usable(nets, threads, mode, monkeypatch):
    _, fused = nets
    monkeypatch.setenv("MNV2_FUSED_CHAIN", mode)
    x = make_input((2, 3, 48, 48), "channels_last")
    with torch.no_grad(), num_threads(threads):
        expected = fused(x)
        args = list(fused._bound.weights(fused.features, fused.classifier).op_arguments())
        bad = list(args[3])
        bad[6 * 8 + 4] = bad[6 * 8 + 4][:, :-1]  # block 8's projection loses an input channel
        with pytest.raises((RuntimeError, ValueError)):
            torch.ops.mnv2_fused.mobilenet_v2_forward(x, *args[:3], bad, *args[4:])
        assert torch.equal(torch.ops.mnv2_fused.mobilenet_v2_forward(x, *args), expected)


def test_another_process_on_a_core(nets):
    """With a process spinning on a core the chains switch to one thread and back (by the time
    their leader spends off its core, and the machine's idle time): every output is still
    torchvision's."""
    reference, fused = nets
    x = make_input((1, 3, 96, 96), "channels_last")
    with torch.no_grad(), num_threads(2):
        ref = reference(x)
        expected = fused(x)
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = [fused(x) for _ in range(60)]
        finally:
            spinner.kill()
            spinner.wait()
        quiet = [fused(x) for _ in range(20)]
    assert rel_err(expected, ref) <= 1e-4
    assert all(torch.equal(o, expected) for o in loaded + quiet)
