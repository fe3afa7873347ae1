"""One rank of verl's FSDP2 actor on CPU (gloo), run as its own process by test_verl_two_ranks_cpu.py.

``python verl_rank.py OUT MODEL_DIR TRAIN_PARQUET DEMOS_PARQUET`` with RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT set: builds the same ICPO batch on every rank, trains one ``update_actor`` on this rank's contiguous
share of its rows (as verl's dispatch splits a batch over data-parallel ranks), writes the finalized metrics
(rank 0) to OUT/metrics.json and saves verl's checkpoint to OUT/global_step_1/actor.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LR, N_ON, N_OFF = 1e-2, 4, 2


def main(out: Path, model_dir: Path, train: Path, demos: Path) -> None:
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding
    from verl_fixtures import fake_generate, icpo_block, load_batch, make_tokenizer

    from icpo_core.algorithm import DemoPool, off_policy_source
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl import cpu_shims
    from icpo_core.engines.verl import overrides as ov
    from icpo_core.engines.verl.batch_ops import expand_with_ief, mix_generated
    from icpo_core.engines.verl.losses import finalize_actor_metrics, icpo_advantage
    from icpo_core.engines.verl.trainer import make_actor_loss

    cpu_shims.install()
    cpu_shims.init_gloo_from_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "actor_rollout_ref.actor.optim.optimizer=SGD",
        f"actor_rollout_ref.actor.optim.lr={LR}",
        "actor_rollout_ref.actor.optim.weight_decay=0.0",
        "actor_rollout_ref.actor.optim.clip_grad=1.0",
        "actor_rollout_ref.actor.optim.total_training_steps=10",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.shuffle=false",
        f"actor_rollout_ref.rollout.n={N_ON}",
        *icpo_block(n_on=N_ON, n_off=N_OFF),
    ]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)
    from verl.workers.engine_workers import ActorRolloutRefWorker

    worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    worker.set_loss_fn(make_actor_loss(cfg))

    # the same batch on every rank: fixed uids, seeded draws, old log-probs of the weights on disk
    tok = make_tokenizer()
    algo = AlgorithmParams(n_on=N_ON, n_off=N_OFF, k_demos=1)
    prompts = load_batch(tok, train, 2)
    prompts.non_tensor_batch["uid"] = np.array([f"p{i}" for i in range(len(prompts))], dtype=object)
    prompts = prompts.repeat(N_ON, interleave=True)
    rng = np.random.default_rng(0)
    ext, src = expand_with_ief(prompts, algo, off_policy_source(algo), DemoPool.from_parquet(demos), "", rng)
    uids = np.asarray(prompts.non_tensor_batch["uid"])
    batch, _ = mix_generated(uids, fake_generate(tok)(ext), src, algo, 1, 10, rng)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    b = batch.batch
    r = b["responses"].shape[1]
    with torch.no_grad():
        logits = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]
        )
        old = torch.log_softmax(logits.logits[:, -r - 1 : -1], -1).gather(-1, b["responses"].unsqueeze(-1))
    b["old_log_probs"] = old.squeeze(-1)
    b["ref_log_prob"] = b["old_log_probs"] + 0.05 * torch.randn(
        b["old_log_probs"].shape, generator=torch.Generator().manual_seed(0)
    )
    b["advantages"], _ = icpo_advantage(b["rm_scores"], b["response_mask"], uids)
    batch.meta_info.update(temperature=1.0, multi_turn=False)

    n = len(batch)
    share = batch[rank * n // world : (rank + 1) * n // world]
    td = left_right_2_no_padding(share.to_tensordict())
    tu.assign_non_tensor(
        td, calculate_entropy=False, distillation_use_topk=False, distillation_only=False, global_batch_size=n,
        mini_batch_size=n, epochs=1, seed=0, dataloader_kwargs={"shuffle": False}, compute_loss=True,
    )  # fmt: skip
    metrics = finalize_actor_metrics(tu.get(worker.update_actor(td), "metrics"))
    worker.save_checkpoint(str(out / "global_step_1" / "actor"), global_step=1)
    if rank == 0:
        keep = {k: float(np.mean(v)) for k, v in metrics.items() if k.startswith("actor/")}
        keep["n_ief_rows"] = int(b["icpo_ief"].sum())
        (out / "metrics.json").write_text(json.dumps(keep, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*(Path(a) for a in sys.argv[1:5]))
