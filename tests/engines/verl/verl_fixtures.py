"""Helpers for the verl engine tests: a tiny chat tokenizer, the project's parquet, a fake generation server,
a fake verl checkpoint step."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SUFFIX = " Put your final answer within \\boxed{}."
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(extra_words: tuple[str, ...] = ()):
    """A whitespace word-level tokenizer with a chat template (no hub, builds in milliseconds); ``extra_words``
    are appended to the vocabulary (after every default word, so the default ids do not move)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    words += [str(i) for i in range(100)] + [
        "What",
        "is",
        "plus",
        "?",
        "Put",
        "your",
        "final",
        "answer",
        "within",
        "\\boxed{}",
        ".",
        "Question:",
        "Answer:",
        "sol",
        "=",
        ":",
    ]
    words += list(extra_words)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|end|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def project_rows(n: int) -> pd.DataFrame:
    """Rows in the project's verl parquet schema (docs/architecture.md)."""
    rows = []
    for i in range(n):
        q = f"What is {i} plus {i} ?"
        rows.append(
            {
                "data_source": "synthetic",
                "prompt": [{"role": "user", "content": q + SUFFIX}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
                "extra_info": {"index": i, "split": "train", "question": q, "level": 0},
                "target": f"{i} plus {i} = {2 * i} \\boxed{{{2 * i}}}",
            }
        )
    return pd.DataFrame(rows)


BOXED = tuple(f"\\boxed{{{i}}}" for i in range(10))  # extra words: answers a grader can read


def boxed_tokenizer():
    """:func:`make_tokenizer` that also knows ``\\boxed{0}`` .. ``\\boxed{9}`` (the format control, the traces)."""
    return make_tokenizer(BOXED)


def write_demos(path):
    """A demo cache (data/demos.parquet schema) of four solved problems unlike the training ones."""
    pd.DataFrame(
        [
            {"id": f"d{i}", "problem": f"What is {i} plus {i} ?", "solution": f"sol = {2 * i} \\boxed{{{2 * i}}}",
             "answer": str(2 * i), "source": "synthetic"}
            for i in range(10, 14)
        ]
    ).to_parquet(path)  # fmt: skip
    return path


def load_batch(tokenizer, train_parquet, n_prompts: int):
    """A real training batch: verl's RLHFDataset + collate_fn -> DataProto, uid added as fit() does."""
    import uuid

    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    cfg = OmegaConf.create(
        {"max_prompt_length": 64, "filter_overlong_prompts": False, "return_raw_chat": True}
    )
    ds = RLHFDataset([str(train_parquet)], tokenizer, cfg)
    batch = DataProto.from_single_dict(collate_fn([ds[i] for i in range(n_prompts)]))
    batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))], dtype=object)
    return batch


def fake_generate(tokenizer, prompt_len: int = 48, resp_len: int = 8):
    """Stand-in for the agent-loop workers + streamed reward: renders raw_prompt with the chat template,
    left-pads to ``prompt_len`` and answers correctly iff the prompt holds a demo (more than one user turn
    or an inline 'Question:' block). Returns the output tensors verl 0.9.1's agent loop returns.
    """
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    seen: list[list[dict]] = []

    def generate(batch: DataProto) -> DataProto:
        pad = tokenizer.pad_token_id
        n = len(batch)
        prompts = torch.full((n, prompt_len), pad)
        p_mask = torch.zeros(n, prompt_len, dtype=torch.long)
        responses = torch.full((n, resp_len), pad)
        r_mask = torch.zeros(n, resp_len, dtype=torch.long)
        scores = torch.zeros(n, resp_len)
        for i in range(n):
            msgs = list(batch.non_tensor_batch["raw_prompt"][i])
            seen.append(msgs)
            ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            ids = ids[-prompt_len:]
            prompts[i, prompt_len - len(ids) :] = torch.tensor(ids)
            p_mask[i, prompt_len - len(ids) :] = 1
            has_demo = sum(m["role"] == "user" for m in msgs) > 1 or "Question:" in msgs[-1]["content"]
            gt = batch.non_tensor_batch["reward_model"][i]["ground_truth"]
            answer = gt if has_demo else "99"
            text = f"sol = {answer} \\boxed{{{answer}}}" if has_demo else f"{answer} <|end|>"
            r_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:resp_len]
            responses[i, : len(r_ids)] = torch.tensor(r_ids)
            r_mask[i, : len(r_ids)] = 1
            scores[i, len(r_ids) - 1] = float(answer == gt)
        attn = torch.cat([p_mask, r_mask], dim=1)
        out = DataProto.from_dict(
            tensors={
                "prompts": prompts,
                "responses": responses,
                "response_mask": r_mask,
                "input_ids": torch.cat([prompts, responses], dim=1),
                "attention_mask": attn,
                "position_ids": compute_position_id_with_mask(attn),
                "rm_scores": scores,
                "rollout_log_probs": -torch.rand(n, resp_len),
            },
            non_tensors={
                "raw_prompt": batch.non_tensor_batch["raw_prompt"].copy(),
                "__num_turns__": np.full(n, 2),
                "multi_modal_inputs": np.array([{} for _ in range(n)], dtype=object),
                "acc": scores.sum(-1).double().numpy(),  # the reward loop's extra info of a float score
            },
            meta_info={"reward_extra_keys": ["acc"]},
        )
        return out

    generate.seen = seen  # type: ignore[attr-defined]
    return generate


def decode_prompt(tokenizer, row_ids: torch.Tensor) -> str:
    return re.sub(r"(<pad>\s*)+", "", tokenizer.decode(row_ids.tolist())).strip()


def write_tiny_llama(path, tokenizer, seed: int = 0):
    """A random 2-layer Llama (~30k parameters) with ``tokenizer``, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    tokenizer.save_pretrained(path)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def icpo_block(demo_path=None, prompt_suffix: str = "", seed: int = 0, **algorithm) -> list[str]:
    """Hydra overrides of a whole ``icpo`` block (config/icpo_trainer.yaml states no value there): the typed
    ``AlgorithmParams(**algorithm)`` (its defaults for the rest) and the three launch keys, as the launch
    writes them."""
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.icpo_block import icpo_overrides
    from icpo_core.engines.verl.overrides import format_overrides

    algo = AlgorithmParams(**algorithm)
    path = None if demo_path is None else str(demo_path)
    return format_overrides(icpo_overrides(algo, demo_path=path, prompt_suffix=prompt_suffix, seed=seed))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_verl_step(root: Path, step: int) -> None:
    """What verl's FSDPCheckpointManager leaves for one step with one rank (the extra state is what
    ``checkpoint_layout.is_complete`` reads), then the marker verl writes after the step."""
    from icpo_core import checkpoint_layout as layout

    actor = layout.actor_dir(root, step)
    actor.mkdir(parents=True)
    for kind in ("model", "optim"):
        torch.save({}, actor / f"{kind}_world_size_1_rank_0.pt")
    torch.save({"lr_scheduler": None, "rng": {}}, actor / "extra_state_world_size_1_rank_0.pt")
    (root / layout.LATEST_FILE).write_text(f"{step}\n")
