"""What a benchmark ran on, printed beside its figures (shared by every script here)."""
from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(device: torch.device | str | None = None) -> str:
    """CPU, memory, GPU (when ``device`` is CUDA, or any GPU is visible), python/torch versions, threads."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        gpu = f", GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    elif device is None and torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name()}"
    else:
        gpu = ", no GPU used"
    return (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM{gpu}; python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
