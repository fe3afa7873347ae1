"""A full disk under the data stages, for real (a tmpfs the test mounts): ``icpo prepare-demos`` and ``icpo
prepare-train`` meeting ENOSPC print one line naming the problem and the fix, exit 2 with no traceback, leave
the previous parquet and metrics byte-identical and no partial file beside them, and succeed once space is freed.
"""

from __future__ import annotations

import json
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
