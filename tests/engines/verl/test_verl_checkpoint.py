"""``latest_step`` finds the checkpoints verl writes with W ranks, so ``icpo merge`` runs after a multi-GPU run."""

from __future__ import annotations

import json

from icpo_core import checkpoint_layout as layout


def _fake_verl_step(root, step: int, world: int, ranks: range | None = None) -> None:
    """The files verl 0.9.1's FSDPCheckpointManager writes for one step with ``world`` ranks."""
    actor = layout.actor_dir(root, step)
    actor.mkdir(parents=True)
    for r in ranks if ranks is not None else range(world):
        for kind in ("model", "optim", "extra_state"):
            (actor / f"{kind}_world_size_{world}_rank_{r}.pt").write_bytes(b"")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": world}))


def test_latest_step_finds_an_eight_rank_checkpoint(tmp_path):
    _fake_verl_step(tmp_path, 50, world=8)
    _fake_verl_step(tmp_path, 100, world=8)
    (tmp_path / layout.LATEST_FILE).write_text("100")
    assert layout.list_steps(tmp_path) == [50, 100]
    assert layout.latest_step(tmp_path) == 100


def test_a_step_missing_a_rank_is_incomplete(tmp_path):
    """A save killed after some ranks wrote their files: the marker's step is skipped for the last whole one."""
    _fake_verl_step(tmp_path, 50, world=8)
    _fake_verl_step(tmp_path, 100, world=8, ranks=range(7))  # rank 7 never wrote
    (tmp_path / layout.LATEST_FILE).write_text("100")
    assert layout.list_steps(tmp_path) == [50]
    assert layout.latest_step(tmp_path) == 50


def test_world_size_one_is_unchanged(tmp_path):
    _fake_verl_step(tmp_path, 3, world=1)
    assert layout.latest_step(tmp_path) == 3
    (layout.actor_dir(tmp_path, 3) / "extra_state_world_size_1_rank_0.pt").unlink()
    assert layout.latest_step(tmp_path) is None


def test_the_folders_verls_pruning_leaves_are_removed_and_nothing_else(tmp_path):
    """verl's ``max_actor_ckpt_to_keep`` removes an old step's actor folder and leaves ``data.pt`` behind."""
    for step in (1, 2):
        (tmp_path / f"global_step_{step}").mkdir()
        (tmp_path / f"global_step_{step}" / "data.pt").write_bytes(b"x")
    _fake_verl_step(tmp_path, 3, world=1)
    (tmp_path / "global_step_3" / "data.pt").write_bytes(b"x")
    _fake_verl_step(tmp_path, 4, world=2, ranks=range(1))  # incomplete (a killed save): not a stub, kept
    (tmp_path / "global_step_5").mkdir()  # the marker's step, whatever it holds, is kept
    (tmp_path / layout.LATEST_FILE).write_text("5")
    (tmp_path / "mlflow_run.json").write_text("{}")
    assert layout.remove_step_stubs(tmp_path) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global_step_3", "global_step_4", "global_step_5", layout.LATEST_FILE, "mlflow_run.json",
    ]  # fmt: skip
    assert layout.remove_step_stubs(tmp_path / "absent") == []
