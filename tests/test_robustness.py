"""Threads, leaks, determinism and oversized or mismatched inputs."""
import copy
import threading

import pytest
import torch
from helpers import make_block, make_input, num_threads, rel_err

import mnv2_fused
from mnv2_fused import FusedInvertedResidual


def test_four_threads_share_one_module():
    block = make_block(32, 32, 1, 6)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(block), backend="cpu").eval()
    inputs = [make_input((2, 32, 14, 14), seed=i) for i in range(4)]
    with torch.no_grad():
        expected = [block(x) for x in inputs]
    errors, results = [], [None] * 4

    def worker(i):
        try:
            with torch.no_grad():
                for _ in range(25):
                    out = fused(inputs[i])
                    if rel_err(out, expected[i]) > 1e-5:
                        errors.append(i)
                results[i] = out
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(r is not None for r in results)


def test_cache_under_concurrent_refresh():
    """Readers running while the weights are reloaded never crash, and once the reload is done
    every thread sees the new weights (no stale fold survives). Outputs *during* a reload mix old
    and new weights, as they would for any nn.Module, so they are not compared."""
    a, b = make_block(16, 16, 1, 6, seed=1), make_block(16, 16, 1, 6, seed=2)
    fused = FusedInvertedResidual.from_block(copy.deepcopy(a), backend="cpu").eval()
    x = make_input((1, 16, 8, 8))
    with torch.no_grad():
        ref_a = a(x)
    errors, stop = [], threading.Event()

    def reader():
        try:
            with torch.no_grad():
                while not stop.is_set():
                    fused(x)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for _ in range(20):
        fused.load_state_dict(b.state_dict())
        fused.load_state_dict(a.state_dict())
    stop.set()
    for th in threads:
        th.join()
    assert not errors
    results = [None] * 4

    def final(i):
        with torch.no_grad():
            results[i] = fused(x)

    threads = [threading.Thread(target=final, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(rel_err(r, ref_a) <= 1e-5 for r in results)


def test_forward_while_another_thread_refreshes():
    """refresh() drops the folds and the bound call while readers fold and bind again: a reader must
    never bind weights without their version snapshot (that would crash in C++)."""
    fused = FusedInvertedResidual.from_block(make_block(16, 16, 1, 6), backend="cpu").eval()
    x = make_input((1, 16, 4, 4))
    with torch.no_grad():
        expected = fused(x)
    errors, stop = [], threading.Event()

    def reader():
        try:
            with torch.no_grad():
                while not stop.is_set():
                    if not torch.equal(fused(x), expected):
                        errors.append("wrong output")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for _ in range(1000):
        fused.refresh()
    stop.set()
    for th in threads:
        th.join()
    assert not errors


def test_no_leak_over_10000_calls():
    psutil = pytest.importorskip("psutil")
    fused = FusedInvertedResidual.from_block(make_block(24, 24, 1, 6), backend="cpu").eval()
    x = make_input((1, 24, 14, 14))
    proc = psutil.Process()
    with torch.no_grad():
        for _ in range(1000):
            fused(x)
        before = proc.memory_info().rss
        for _ in range(10000):
            fused(x)
        after = proc.memory_info().rss
    assert after - before < 8 * 2**20, f"resident set grew by {(after - before) / 2**20:.1f} MiB"


def test_deterministic_across_calls_and_thread_counts():
    fused = FusedInvertedResidual.from_block(make_block(32, 64, 2, 6), backend="cpu").eval()
    x = make_input((3, 32, 23, 19), "channels_last")
    outs = []
    for n in (1, 2, 1, 2):
        with num_threads(n), torch.no_grad():
            outs.append(fused(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_weights_of_wrong_shape_through_load_state_dict():
    fused = FusedInvertedResidual(8, 8, 1, 6)
    bad = make_block(8, 16, 1, 6).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        fused.load_state_dict(bad)


def test_size_too_large_refused_before_allocation():
    """An output of ~2^63 bytes is refused with an exception, not a crash."""
    w = mnv2_fused.fold_block(make_block(4, 4, 1, 6).conv)
    x = torch.empty(1, 4, 1, 1).expand(2**40, 4, 2**10, 2**10)
    with pytest.raises(RuntimeError):
        torch.ops.mnv2_fused.inverted_residual(x, *w, 1, True)


def test_op_with_mismatched_devices():
    w = mnv2_fused.fold_block(make_block(4, 4, 1, 6).conv)
    x = torch.randn(1, 4, 3, 3, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ops.mnv2_fused.inverted_residual(x, *w, 1, True)
