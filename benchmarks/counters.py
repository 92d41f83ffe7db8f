"""Work and memory counters for benchmarks: FLOPs by torch's formulas, peak memory (CUDA or sampled RSS)."""
from __future__ import annotations

import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class FlopCount(TorchDispatchMode):
    """Matmul, convolution and attention FLOPs (torch's formulas) of everything run inside, backward included."""

    FORMULAS = {
        **flop_registry,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
            flop_registry[torch.ops.aten._scaled_dot_product_flash_attention],
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
            flop_registry[torch.ops.aten._scaled_dot_product_flash_attention_backward],
    }

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


class PeakMemory:
    """Peak memory in MB during a block: CUDA allocations, or this process's RSS sampled every 2 ms."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process, self._stop = psutil.Process(), threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, process.memory_info().rss / 2**20)
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
