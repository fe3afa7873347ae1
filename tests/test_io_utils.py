import json

import pytest

from icpo_core.io_utils import atomic_path, atomic_write_json


def test_atomic_write_json_roundtrip(tmp_path):
    out = atomic_write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert json.loads(out.read_text()) == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_directory_replaced_whole(tmp_path):
    target = tmp_path / "model"
    for content in ("v1", "v2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.txt").write_text(content)
    assert (target / "w.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
