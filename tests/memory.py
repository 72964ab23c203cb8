"""Peak bytes held by the CPU allocator during a call, from torch.profiler's memory events."""
from __future__ import annotations

import torch


def peak_cpu_bytes(fn) -> int:
    """Most bytes allocated during fn() and live at once: every allocation and free the profiler
    records on the CPU, replayed in time order (inputs that exist before the call are not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    held = peak = 0
    for _, delta in sorted(events):
        held += delta
        peak = max(peak, held)
    return peak
