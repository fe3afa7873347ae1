"""The verl.plugins entry point: present after a plain `import verl` in a fresh interpreter, idempotent."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, verl
from verl.trainer.ppo import core_algos as ca
adv, loss = ca.ADV_ESTIMATOR_REGISTRY.get("icpo"), ca.POLICY_LOSS_REGISTRY.get("icpo")
assert adv is not None and adv.__module__ == "icpo_core.engines.verl.losses", adv
assert loss is not None and loss.__name__ == "icpo_policy_loss_fn", loss
import icpo_core.engines.verl.plugin as plugin
importlib.reload(plugin)                       # same functions: no error
import icpo_core.engines.verl.losses as losses
importlib.reload(losses); importlib.reload(plugin)   # new function objects: replaced, not refused
assert ca.get_adv_estimator_fn("icpo") is losses.icpo_advantage
print("OK")
"""


@pytest.mark.slow
def test_entry_point_registers_in_fresh_interpreter():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("OK")
