"""What this machine's CPU can do, read once where a default depends on it (vLLM's dtype, the trainer's autocast)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), read from ``/proc/cpuinfo``.

    Without them torch and the vLLM CPU build emulate bf16, and float32 is the fast path.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})
