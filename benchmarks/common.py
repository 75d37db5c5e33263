"""Helpers shared by the benchmarks: honest clocks on a GPU and a description of the machine."""

from __future__ import annotations

__all__ = ["synchronize", "cpu_model", "describe_machine"]

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or the platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What the figures depend on besides the code: hardware, threads and library versions."""
    return {
        "cpu": cpu_model(),
        # The cores this process may run on, which a container or taskset can limit below the host's.
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nflows": importlib.metadata.version("nflows"),
    }
