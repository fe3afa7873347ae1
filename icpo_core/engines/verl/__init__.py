"""verl engine: paper-scale GRPO / ICPO / LUFFY and the reward controls on Ray with vLLM rollouts (GPU nodes).

- :mod:`.overrides`: params.yaml -> the run's hydra overrides (a pure mapping);
- :mod:`.icpo_block`: the ``icpo`` block of the config both ways (every algorithm param written, read back typed);
- :mod:`.job`: the verl job of one run, ``build_command(params, run)`` / ``launch(params, run)``: checks,
  environment, MLflow run, the verl process;
- :mod:`.resume`: the run's training params, recorded at a fresh start and checked before a resume launches;
- :mod:`.launcher`: ``python -m icpo_core.engines.verl.launcher``, hydra main + ICPO task runner;
- :mod:`.trainer`: ``RayICPOTrainer`` (a ``RayPPOTrainer`` that installs the project's loss on every run, logs
  ICPO metrics);
- :mod:`.manager`: ``ICPOAgentLoopManager`` (IEF rows, ERRS, bonus, prompt restore around generation; LUFFY's
  expert-trace rows; the control rewards);
- :mod:`.expert_traces`: LUFFY's training file without target-less rows, its traces tokenised and graded once;
- :mod:`.batch_ops`: those transforms on ``DataProto`` (no Ray, tested on CPU);
- :mod:`.losses`: the ``icpo`` advantage estimator / policy loss and the actor loss given to ``set_loss_fn``;
- :mod:`.plugin`: the ``verl.plugins`` entry point registering them on every ``import verl``;
- :mod:`.reward`: the rule-based math reward verl's reward loop calls.

Only :mod:`.job` (and the modules it calls) is imported here; they need neither verl nor torch.
"""

from icpo_core.engines.verl.job import build_command, launch

__all__ = ["build_command", "launch"]
