"""Names of the per-row fields a training batch carries between the rollout and the loss.

``IEF_KEY``: the off-policy row flag (float, 1.0 = an IEF trajectory, or a LUFFY expert trace) that the ICPO loss
reads as its ``ief_mask`` (:func:`icpo_core.algorithm.losses.icpo_policy_loss`). The verl engine sets it on the
``DataProto`` after generation (:mod:`icpo_core.engines.verl.batch_ops`) and its actor loss reads it back
(:mod:`icpo_core.engines.verl.losses`); one name, defined once here."""

from __future__ import annotations

IEF_KEY = "icpo_ief"
