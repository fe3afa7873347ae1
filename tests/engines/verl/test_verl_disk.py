"""The verl launch compares the free disk with one more checkpoint of the base model before it starts verl, as the
local engine does, and stops with one line: verl would fail at its first save, hours into the run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from disk_helpers import small_fs

from icpo_core.cli import main
from icpo_core.config import load_params
from icpo_core.engines import estimates
from icpo_core.engines.verl import job, preflight
from icpo_core.io_utils import DiskFullError

ROOT = Path(__file__).resolve().parents[3]


def _header_only_model(folder: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors file with a header and no tensor data: the estimate reads headers only."""
    folder.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    return path


def test_the_checkpoint_estimate_counts_fp32_weights_and_adamw_state(tmp_path):
    _header_only_model(tmp_path / "m", {"a": [1000, 1000], "b": [1000]})
    n = estimates.safetensors_parameters(tmp_path / "m")
    assert n == 1_001_000
    extra = 64 * 1024**2
    assert estimates.checkpoint_bytes(n) == n * 12 + extra
    assert estimates.checkpoint_bytes(n, lora=True) == n * 4 + extra
    # Qwen3-8B's ~8.19e9 parameters: ~98 GB per checkpoint (params.yaml sizes keep_checkpoints by it)
    assert round(estimates.checkpoint_bytes(8_190_000_000) / 1e9) == 98


def test_a_verl_launch_without_room_for_a_checkpoint_stops_with_one_line(tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["engine"] = "verl"
    with small_fs(tmp_path / "fs", 8) as fs:
        _header_only_model(fs / "models" / "base", {"w": [4000, 1000]})  # 4M parameters: ~48 MB + 64 MiB
        (fs / "params.yaml").write_text(yaml.safe_dump(raw))
        monkeypatch.chdir(fs)

        def launched(*a, **k):
            raise AssertionError("verl launched")

        monkeypatch.setattr(job, "build_command", launched)
        monkeypatch.setattr(preflight, "check_verl_version", launched)
        params = load_params(fs / "params.yaml")
        with pytest.raises(DiskFullError) as e:
            job.launch(params, "grpo", fs)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("train grpo (verl: one more checkpoint of 4.0M parameters")
        assert "needs ~0.11 GB free" in msg and "lower train.keep_checkpoints" in msg
        # the stage command: exit 2 and the same single line
        assert main(["train", "--run", "grpo"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "free some space" in err
        assert not list((fs / "runs" / "grpo" / "checkpoints").glob("global_step_*"))
