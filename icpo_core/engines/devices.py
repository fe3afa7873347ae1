"""Where a run executes, decided before anything starts: no silent CPU path on a GPU node.

``train.device: auto`` means CUDA when this process sees it. A run that asks for GPUs (:func:`gpu_request`: a
paper profile, or more than one GPU in ``train.verl``) and sees no CUDA stops with one line naming the cause
(:func:`diagnose_no_cuda`: a CPU-only torch build, ``CUDA_VISIBLE_DEVICES`` hiding every GPU, a driver too old for
the torch build, no driver) and the fix, instead of falling back to the CPU path (verl's CPU shims, the local
engine on CPU) and running an 8B model there for days. The CPU path is taken only when ``train.device: cpu`` is
set, or by the embedded default (one GPU asked for, none seen).

:func:`flash_attn_wheel` says whether flash-attn publishes a wheel for the installed torch / CUDA (a table in code:
no network at launch).

No torch import at module level; :func:`cuda_status` imports it only when asked.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass

from icpo_core.config import Params, is_paper_profile
from icpo_core.errors import UserError

SETUP_GPU = "`make setup-gpu` (torch 2.11.0 with CUDA, vLLM's CUDA build)"


def gpu_request(params: Params) -> str | None:
    """Why the active params ask for GPUs (a short phrase), or None (the embedded default's single GPU)."""
    v = params.train.verl
    gpus = v.nnodes * v.n_gpus_per_node
    if is_paper_profile(params.profile):
        return f"profile {params.profile} ({gpus} GPU{'s' if gpus > 1 else ''})"
    if gpus > 1:
        return f"train.verl asks for {gpus} GPUs ({v.nnodes} node(s) x {v.n_gpus_per_node})"
    return None


@dataclass(frozen=True)
class CudaStatus:
    """What this process sees: ``available``, or the ``cause`` it is not and the ``fix``."""

    available: bool
    cause: str = ""
    fix: str = ""


def diagnose_no_cuda(
    *,
    torch_version: str,
    torch_cuda: str | None,
    visible_devices: str | None,
    init_message: str = "",
) -> CudaStatus:
    """The cause of a process seeing no CUDA device, most specific first (pure: tested with each input).

    ``torch_cuda`` is ``torch.version.cuda`` (None for a CPU-only build); ``visible_devices`` the value of
    ``CUDA_VISIBLE_DEVICES`` (None when unset); ``init_message`` what CUDA's initialisation said (torch's
    "CUDA initialization: ..." warning), if anything."""
    if torch_cuda is None:
        return CudaStatus(
            False,
            f"torch {torch_version} is a CPU-only build",
            f"install the GPU environment on this node: {SETUP_GPU}",
        )
    if visible_devices is not None and visible_devices.strip() in ("", "-1", "none", "NoDevFiles"):
        return CudaStatus(
            False,
            f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides every GPU",
            "unset CUDA_VISIBLE_DEVICES or list the GPUs (e.g. 0,1,2,3,4,5,6,7); under a scheduler, request GPUs",
        )
    msg = " ".join(init_message.split())
    low = msg.lower()
    if "too old" in low or "insufficient for cuda runtime" in low or "driver version" in low:
        found = re.search(r"found version (\d+)", msg)
        detail = f" (found {found.group(1)})" if found else ""
        return CudaStatus(
            False,
            f"the NVIDIA driver is too old for torch {torch_version} with CUDA {torch_cuda}{detail}",
            f"update the driver to one that supports CUDA {torch_cuda} (`nvidia-smi` shows the driver's CUDA version)",
        )
    if "no nvidia driver" in low or "found no nvidia driver" in low:
        return CudaStatus(
            False,
            "no NVIDIA driver is loaded on this machine",
            "run on a GPU node (or install the NVIDIA driver); `nvidia-smi` must list the GPUs",
        )
    seen = f": {msg}" if msg else ""
    return CudaStatus(
        False,
        f"torch {torch_version} (CUDA {torch_cuda}) finds no CUDA device{seen}",
        "check `nvidia-smi` on this node and that the job was given GPUs",
    )


def cuda_status() -> CudaStatus:
    """Whether this process sees a CUDA device, and if not, why (:func:`diagnose_no_cuda`)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return CudaStatus(True)
    said = " ".join(str(w.message) for w in caught if "CUDA" in str(w.message))
    return diagnose_no_cuda(
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        init_message=said,
    )


def no_cuda_error(params: Params, status: CudaStatus, why: str) -> UserError:
    """The one-line stop of a GPU run in a process that sees no CUDA."""
    return UserError(
        f"{why} needs CUDA, and this process sees none: {status.cause}. Fix: {status.fix}; or run on CPU on "
        f"purpose with train.device: cpu (`-S train.device=cpu`)"
    )


def resolve_device(params: Params, status_fn=cuda_status) -> str:
    """``cpu`` or ``cuda`` for ``params.train.device``; raises :class:`UserError` (one line) when the run asks
    for GPUs and sees none, or ``train.device: cuda`` sees none. ``auto`` without CUDA falls back to ``cpu``
    only for a run that asks for no GPUs (:func:`gpu_request`)."""
    choice = params.train.device
    if choice == "cpu":
        return "cpu"
    status = status_fn()
    if status.available:
        return "cuda"
    if choice == "cuda":
        raise no_cuda_error(params, status, "train.device: cuda")
    why = gpu_request(params)
    if why is not None:
        raise no_cuda_error(params, status, f"{why} with train.device: auto")
    return "cpu"


# -------------------------------------------------------------------------------------------- flash-attn

FLASH_ATTN_VERSION = "2.8.3"  # verl 0.9.1's flash-attn extra
# The prebuilt wheels of flash-attn 2.8.3's GitHub release (Linux x86_64, cxx11abi TRUE and FALSE), as known to
# this project when it was written; not checked at run time (no network at launch). PyPI carries only the sdist,
# which compiles the CUDA kernels when no wheel matches.
FLASH_ATTN_WHEELS = {
    "cuda": ("12",),
    "torch": ("2.4", "2.5", "2.6", "2.7", "2.8", "2.9"),
    "python": ("3.9", "3.10", "3.11", "3.12", "3.13"),
}


def _major_minor(version: str | None) -> str:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def flash_attn_wheel(torch_version: str, torch_cuda: str | None, python: str | None = None) -> str | None:
    """None when flash-attn :data:`FLASH_ATTN_VERSION` publishes a wheel for this torch / CUDA / Python, else the
    plain reason it does not (the install then compiles it from source)."""
    py = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    tv = _major_minor(torch_version)
    cuda_major = (torch_cuda or "").split(".")[0]
    if not torch_cuda:
        return f"torch {torch_version} has no CUDA, and flash-attn needs it"
    missing = []
    if cuda_major not in FLASH_ATTN_WHEELS["cuda"]:
        missing.append(f"CUDA {torch_cuda}")
    if tv not in FLASH_ATTN_WHEELS["torch"]:
        missing.append(f"torch {tv}")
    if py not in FLASH_ATTN_WHEELS["python"]:
        missing.append(f"Python {py}")
    if not missing:
        return None
    known = (
        f"CUDA {'/'.join(FLASH_ATTN_WHEELS['cuda'])} with torch {FLASH_ATTN_WHEELS['torch'][0]}-"
        f"{FLASH_ATTN_WHEELS['torch'][-1]}"
    )
    return (
        f"flash-attn {FLASH_ATTN_VERSION} publishes no wheel for {' / '.join(missing)} (its wheels: {known}), so "
        f"`make setup-gpu FLASH_ATTN=1` compiles it from source (an hour or more; needs nvcc {torch_cuda} and ninja)"
    )


def flash_attn_note(torch_version: str, torch_cuda: str | None) -> str:
    """The launch's line about flash-attn when it is not installed: SDPA now, and what installing it costs."""
    reason = flash_attn_wheel(torch_version, torch_cuda)
    wheel = (
        reason
        if reason
        else f"flash-attn {FLASH_ATTN_VERSION} publishes a wheel for torch {torch_version} / CUDA {torch_cuda}: "
        "`make setup-gpu FLASH_ATTN=1` installs it"
    )
    return (
        "note: flash-attn is not installed: verl runs with SDPA attention and use_remove_padding=false (the "
        "supported first run; slower and more memory than flash_attention_2 with packed sequences). " + wheel
    )
