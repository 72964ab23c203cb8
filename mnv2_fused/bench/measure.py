"""Latency and peak-memory measurement shared by the command line and the benchmarks."""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Iterator, Optional

import torch
from torch import nn


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside: the profiler's native libraries log there
    (`profiler_start`, `gpuGetDeviceCount failed` on a machine without a GPU), which is noise to
    whoever reads the measurements."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def scope_times(prefix: str) -> Iterator[list]:
    """Times, on this thread, the profiler scopes opened in the block whose names start with
    `prefix` (such as the stages of a converted MobileNetV2's one network call, "mnv2_fused.
    mobilenet_v2_forward: block 3"), without torch.profiler, whose own work slowed what it measured
    on a 2-core machine. The list it yields holds, after the block, (name, seconds, jobs, waiting,
    outside_jobs) of each scope in the order they closed: its wall time, and the team jobs its
    thread led meanwhile (csrc/cpu/team.h), how many, the seconds it waited in them for the other
    threads' chunks, and the scope's seconds outside any job."""
    from .. import _C

    times: list = []
    _C.start_scope_timer(prefix)
    try:
        yield times
    finally:
        times.extend(_C.stop_scope_timer())


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm of the difference over the norm of the reference, in float64 (the difference's norm
    when the reference is zero)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def held_bytes(model: nn.Module) -> int:
    """Bytes the converted networks in ``model`` keep between forwards for their activations and
    scratch (``FusedMobileNetV2.workspace_bytes``)."""
    return sum(m.workspace_bytes() for m in model.modules() if hasattr(m, "workspace_bytes"))


def peak_cpu_bytes(fn: Callable[[], object], held: Optional[Callable[[], int]] = None) -> int:
    """Most bytes allocated during fn() and live at once on the CPU: every allocation and free that
    torch.profiler records, replayed in time order. Tensors that exist before the call (inputs,
    weights) are not counted; anything fn allocates is, workspaces included. ``held()``, read before
    the call, adds the memory that fn's model keeps between calls and fn uses without allocating it
    (``held_bytes``: a converted MobileNetV2's forwards lay their activations in such an arena; the
    call that first sizes it allocates it, and is counted that way)."""
    kept = held() if held is not None else 0
    with native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                          profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for _, delta in sorted(events):
        live += delta
        peak = max(peak, live)
    return kept + peak


def run_times(fn: Callable[[], object], warmup: int = 3, repeat: int = 20) -> list[float]:
    """Wall time of each of `repeat` calls of fn(), in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_ms(fn: Callable[[], object], warmup: int = 3, repeat: int = 20) -> float:
    """Median wall time of fn() in milliseconds, after warm-up."""
    return statistics.median(run_times(fn, warmup, repeat)) * 1e3


def alternating_ratio(fn: Callable[[], object], other: Callable[[], object], rounds: int = 8, repeat: int = 20,
                      pause: float = 0.1) -> tuple[float, float, float]:
    """How many times faster fn is than other, timed in alternation: (ratio, fn's median, other's
    median), in seconds. Each round times a block of ``repeat`` calls of each; the ratio is the
    median over rounds of the two blocks' median ratio. On a shared machine a slow spell lasts
    from a fraction of a second to seconds: timed one after the other, one function can land in it
    and the other not; two adjacent blocks mostly see it alike, and the median over rounds drops
    the rounds it split. The pause before each block lets the previous function's idle thread pool
    stop spinning on the cores."""
    ratios, mine, theirs = [], [], []
    for _ in range(rounds):
        time.sleep(pause)
        a = statistics.median(run_times(fn, warmup=2, repeat=repeat))
        time.sleep(pause)
        b = statistics.median(run_times(other, warmup=2, repeat=repeat))
        ratios.append(b / a)
        mine.append(a)
        theirs.append(b)
    return statistics.median(ratios), statistics.median(mine), statistics.median(theirs)
