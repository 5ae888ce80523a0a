"""A guard for the hot loop's device discipline, usable on a CPU-only machine.

Inside `device_guard()`:
- every tensor created without an explicit device lands on the `meta` device, so code that forgets the run's
  device (`torch.zeros(k)` beside CUDA tensors) fails here on the CPU exactly as it would on a GPU;
- the guard counts device -> host reads (`aten._local_scalar_dense`: `.item()`, `float(t)`, `int(t)`, `if t:`),
  each a synchronisation on a GPU, and copies between devices (`aten._to_copy` / `copy_` across devices).
  `.tolist()`, `.numpy()` and `.cpu()` of a CPU tensor do not dispatch, so on a CPU-only machine they are not
  counted (on a GPU they show as cross-device copies). torch's Adam reads its step counter, a CPU scalar that
  needs no device sync, per parameter tensor and step: those reads are left out of the count.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
import torch.optim.adam as torch_adam
from torch.utils._python_dispatch import TorchDispatchMode


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.in_adam_step_count = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense" and not self.in_adam_step_count:
            self.counts["host_reads"] += 1
        elif name in ("_to_copy", "copy_"):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            target = kwargs.get("device")
            devices = {t.device for t in tensors} | ({torch.device(target)} if target is not None else set())
            if len(devices) > 1:
                self.counts["cross_device_copies"] += 1
        return func(*args, **kwargs)


@contextmanager
def device_guard():
    """Yields a Counter filled with `host_reads` and `cross_device_copies` while the block runs."""
    mode = _Count()
    get_value = torch_adam._get_value

    def adam_step_count(x):
        mode.in_adam_step_count = True
        try:
            return get_value(x)
        finally:
            mode.in_adam_step_count = False

    torch_adam._get_value = adam_step_count
    try:
        with torch.device("meta"), mode:
            yield mode.counts
    finally:
        torch_adam._get_value = get_value
