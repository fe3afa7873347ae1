"""No silent CPU path on a GPU node: a run that asks for GPUs and sees no CUDA stops before launch with one line
naming the cause and the fix; the CPU path only on purpose (train.device: cpu) or for the embedded default. And
whether flash-attn publishes a wheel for the installed torch / CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from icpo_core.cli import main
from icpo_core.config import parse_params
from icpo_core.engines import devices
from icpo_core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
PAPER = ["paper_qwen3_1_7b", "paper_qwen3_8b"]
CPU_ONLY_TORCH = torch.version.cuda is None


def _params(profile: str = "embedded", **train):
    raw = {**RAW, "profile": profile}
    raw = {**raw, "train": {**raw["train"], **train}}
    return parse_params(raw)


def test_each_cause_of_no_cuda_is_named_with_its_fix():
    d = devices.diagnose_no_cuda
    cpu = d(torch_version="2.13.0+cpu", torch_cuda=None, visible_devices=None)
    assert cpu.cause == "torch 2.13.0+cpu is a CPU-only build" and "make setup-gpu" in cpu.fix
    hidden = d(torch_version="2.11.0", torch_cuda="13.0", visible_devices="")
    assert "CUDA_VISIBLE_DEVICES=''" in hidden.cause and "unset CUDA_VISIBLE_DEVICES" in hidden.fix
    old = d(
        torch_version="2.11.0",
        torch_cuda="13.0",
        visible_devices="0,1",
        init_message="CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).",
    )
    assert "driver is too old for torch 2.11.0 with CUDA 13.0 (found 12040)" in old.cause
    assert "update the driver" in old.fix
    none = d(torch_version="2.11.0", torch_cuda="13.0", visible_devices=None,
             init_message="CUDA initialization: Found no NVIDIA driver on your system.")  # fmt: skip
    assert "no NVIDIA driver" in none.cause
    other = d(torch_version="2.11.0", torch_cuda="13.0", visible_devices=None)
    assert "finds no CUDA device" in other.cause and "nvidia-smi" in other.fix


def test_a_gpu_run_without_cuda_stops_and_the_cpu_path_is_on_purpose_only():
    no_cuda = devices.CudaStatus(False, "torch x is a CPU-only build", "install the GPU build")
    cuda = devices.CudaStatus(True)
    for profile in PAPER:
        with pytest.raises(UserError) as e:
            devices.resolve_device(_params(profile), lambda: no_cuda)
        msg = str(e.value)
        assert "\n" not in msg and f"profile {profile} (8 GPUs) with train.device: auto needs CUDA" in msg
        assert (
            "torch x is a CPU-only build" in msg
            and "install the GPU build" in msg
            and "train.device: cpu" in msg
        )
        assert devices.resolve_device(_params(profile, device="cpu"), lambda: no_cuda) == "cpu"
        assert devices.resolve_device(_params(profile), lambda: cuda) == "cuda"
    # the embedded default (one GPU asked for): CPU where there is none, as before
    assert devices.resolve_device(_params(), lambda: no_cuda) == "cpu"
    # several GPUs asked for outside a paper profile: a GPU run too
    eight = parse_params(
        {**RAW, "train": {**RAW["train"], "verl": {**RAW["train"]["verl"], "n_gpus_per_node": 8}}}
    )
    with pytest.raises(UserError, match=r"train.verl asks for 8 GPUs"):
        devices.resolve_device(eight, lambda: no_cuda)
    with pytest.raises(UserError, match="train.device: cuda needs CUDA"):
        devices.resolve_device(_params(device="cuda"), lambda: no_cuda)


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="the CPU-only torch build is the cause this checks")
@pytest.mark.parametrize("profile", PAPER)
def test_verl_cmd_under_a_paper_profile_on_this_cpu_machine(profile, capsys, monkeypatch):
    """Done-when of the issue: the one-line GPU error (exit 2, no traceback); with -S train.device=cpu the CPU
    command, said to be one."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["-S", f"profile={profile}", "verl-cmd", "--run", "icpo"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"icpo verl-cmd: error: profile {profile} (8 GPUs) with train.device: auto needs CUDA"
    )
    assert f"torch {torch.__version__} is a CPU-only build" in err and "make setup-gpu" in err
    assert main(["-S", f"profile={profile}", "verl-cmd", "--run", "icpo", "-S", "train.device=cpu"]) == 0
    out, err = capsys.readouterr()
    assert "VERL_PLATFORM=cpu" in out and "trainer.device=cpu" in out
    assert "CPU command (train.device: cpu)" in err


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="the CPU-only torch build is the cause this checks")
def test_verl_cmd_process_exits_2_with_one_line_and_the_embedded_default_prints_its_cpu_command():
    r = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "-S", "profile=paper_qwen3_8b", "verl-cmd", "--run", "icpo"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "CPU-only build" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", "-S", "train.engine=verl", "verl-cmd", "--run", "grpo"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "CPU command (no CUDA here, and the run asks for no GPUs)" in r.stderr


def test_verl_cmd_says_it_printed_the_gpu_command(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    sets = ["-S", "profile=paper_qwen3_8b", "-S", "train.device=cuda"]
    assert main([*sets, "verl-cmd", "--run", "icpo"]) == 0
    out, err = capsys.readouterr()
    assert "trainer.n_gpus_per_node=8" in out and "VERL_PLATFORM" not in out
    assert "GPU command: 1 node(s) x 8 GPU(s), vLLM tensor parallel 8 (profile paper_qwen3_8b" in err


@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="checks the local engine on a machine without CUDA")
def test_the_local_engine_refuses_a_paper_profile_without_cuda():
    from icpo_core.engines.local.step_batch import pick_device

    assert pick_device(_params()).type == "cpu"
    with pytest.raises(UserError, match="needs CUDA"):
        pick_device(_params("paper_qwen3_1_7b", engine="local"))


def test_flash_attn_wheels_known_to_the_project():
    """flash-attn 2.8.3 publishes CUDA 12 wheels for torch 2.4-2.9: none for the gpu extra's torch 2.11 / CUDA
    13.0, which `make setup-gpu FLASH_ATTN=1` therefore compiles; the launch note says so plainly."""
    reason = devices.flash_attn_wheel("2.11.0+cu130", "13.0", "3.11")
    assert reason is not None and "publishes no wheel for CUDA 13.0 / torch 2.11" in reason
    assert "compiles it from source" in reason
    assert devices.flash_attn_wheel("2.8.0+cu128", "12.8", "3.11") is None
    assert "Python 3.14" in devices.flash_attn_wheel("2.8.0", "12.8", "3.14")
    note = devices.flash_attn_note("2.11.0", "13.0")
    assert note.startswith("note: flash-attn is not installed: verl runs with SDPA") and "first run" in note
    assert "publishes a wheel for torch 2.8.0" in devices.flash_attn_note("2.8.0", "12.8")
