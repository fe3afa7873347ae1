"""A full disk under the data stages, for real (a tmpfs the test mounts): ``icpo prepare-demos`` and ``icpo
prepare-train`` meeting ENOSPC print one line naming the problem and the fix, exit 2 with no traceback, leave
the previous parquet and metrics byte-identical and no partial file beside them, and succeed once space is freed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from disk_helpers import fill, small_fs

from icpo_core.cli import main

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the project but the filler and params.yaml, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("filler-") and p.name != "params.yaml"
    }


@pytest.mark.parametrize(
    ("command", "outputs"),
    [("prepare-demos", ["data/demos.parquet"]), ("prepare-train", ["data/train.parquet", "data/eval"])],
)
def test_a_full_disk_keeps_the_last_outputs_and_says_so(tmp_path, monkeypatch, capsys, command, outputs):
    from icpo_core.models.tiny import build_tokenizer

    tok = tmp_path / "tok"  # off the small filesystem: only the stage's outputs land on it
    tok.mkdir()
    build_tokenizer().save(str(tok / "tokenizer.json"))
    args = [command] + (["--model", str(tok)] if command == "prepare-train" else [])
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    with small_fs(tmp_path / "fs", 8) as root:
        monkeypatch.chdir(root)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        assert main(args) == 0
        capsys.readouterr()
        before = _files(root)
        assert all(any(k.startswith(o) for k in before) for o in outputs)

        raw["seed"] = 1  # other problems / demos: every output would change
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        filler = fill(root, leave=0)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("icpo ")]
        assert len(lines) == 1, err[-2000:]
        assert (
            lines[0].startswith(f"icpo {command}: error: disk full")
            and "free some space and rerun" in lines[0]
        )
        assert _files(root) == before  # nothing produced is lost, no partial or temporary file is left

        filler.unlink()
        assert main(args) == 0
        after = _files(root)
        assert set(after) == set(before)
        assert any(after[k] != before[k] for k in after if k.endswith(".parquet"))
        metrics = json.loads(after[f"metrics/{command.replace('-', '_')}.json"])
        assert metrics


@pytest.mark.slow
def test_merge_and_bench_on_a_full_disk_write_nothing_then_finish(tmp_path, monkeypatch, capsys):
    """A trained tiny run on a full tmpfs (MLflow's SQLite store on it too): ``icpo merge`` and ``icpo bench``
    each print one line naming the problem and the fix, exit 2, and leave every file as it was (no merged
    folder, no partial samples or metrics file); after space is freed both finish."""
    from icpo_core.engines.local.tiny import make_tiny_project

    for key in [k for k in list(os.environ) if k.startswith(("MLFLOW_", "ICPO_"))]:
        monkeypatch.delenv(key)
    with small_fs(tmp_path / "fs", 64) as fs:
        root = make_tiny_project(fs / "proj", train={"steps": 1})
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["bench"] = {"backend": "hf", "benchmarks": ["synthetic_l0"], "max_tokens": 4, "batch_size": 4,
                        "grade_workers": 1}  # fmt: skip
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        (root / "data/eval").mkdir(parents=True)
        rows = [{"problem": f"What is {i} plus 1?", "answer": str(i + 1), "solution": ""} for i in range(8)]
        (root / "data/eval/synthetic_l0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        monkeypatch.chdir(root)
        assert main(["train", "--run", "icpo", "--no-progress"]) == 0
        capsys.readouterr()

        filler = fill(root, leave=0)
        before = _files(root)
        for args in (["merge", "--run", "icpo"], ["bench", "--run", "base"]):
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert "Traceback" not in err
            lines = [line for line in err.splitlines() if line.startswith("icpo ")]
            assert len(lines) == 1, err[-2000:]
            assert lines[0].startswith(f"icpo {args[0]}: error: ") and "free some space" in lines[0], lines[0]
            assert _files(root) == before, args  # nothing changed, nothing partial added
        assert not (root / "runs/icpo/merged").exists()

        filler.unlink()
        assert main(["merge", "--run", "icpo"]) == 0
        assert main(["bench", "--run", "base"]) == 0
        assert (root / "runs/icpo/merged/config.json").is_file()
        metrics = [k for k in _files(root) if k.startswith("metrics/bench")]
        assert metrics, sorted(_files(root))
