"""The machine a run trained on, as its train summary records it (``metrics/train_<instance>.json``, key
``machine``), and the one-line kind the report groups runs by.

CPUs differ in their bf16 kernels (AMX, AVX-512 BF16, neither), and so do GPUs: the same seeds give other
trajectories on another kind, so a study's verdict holds for the machine kinds its runs trained on, which the
report names.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; (platform's processor name, no flags) where it cannot be read."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.machine() or "unknown", flags


def cpu_bf16(flags: set[str]) -> str:
    """The CPU's bf16 matrix support: ``amx`` (AMX-BF16), ``avx512_bf16``, or ``none``."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "none"


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


def machine() -> dict[str, Any]:
    """This machine: CPU model, usable cores, CPU bf16 support, GPUs (``None`` without CUDA)."""
    model, flags = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    return {"cpu": model, "cores": cores, "cpu_bf16": cpu_bf16(flags), "gpu": _gpu()}


def kind(m: dict[str, Any] | None) -> str | None:
    """One line naming a machine kind (what changes the numbers: CPU model and bf16 support, cores, GPUs)."""
    if not m:
        return None
    text = f"{m.get('cpu', 'unknown CPU')} ({m.get('cores', '?')} cores, bf16: {m.get('cpu_bf16', '?')})"
    return f"{text}, GPU {m['gpu']}" if m.get("gpu") else text
