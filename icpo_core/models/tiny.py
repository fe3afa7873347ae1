"""Tiny random models for tests and smoke runs: a byte-level BPE tokenizer with a ChatML template, a 2-layer
Llama, and the same model as a GGUF file (to exercise the GGUF path without the 98 MB real one).

They load, generate and train like the real default (same special tokens, same chat format), in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icpo_core.data.synthetic import generate_splits

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_DIMS = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2, "context": 512}


def _corpus() -> list[str]:
    splits = generate_splits((0, 1, 2, 3), train=40, demo=0, eval=0, seed=1234)
    texts = [p.problem + " " + p.solution for p in splits["train"]]
    return [
        *texts,
        "Let's think step by step and output the final answer within \\boxed{}.",
        "0123456789+-*/=()",
    ]


def build_tokenizer(vocab_size: int = 384) -> Any:
    """A trained byte-level BPE ``tokenizers.Tokenizer`` (any text encodes; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def hf_tokenizer(tok: Any | None = None) -> Any:
    """The tiny tokenizer as a transformers tokenizer: ChatML template, eos = pad = ``<|im_end|>``."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok if tok is not None else build_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def write_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    hidden: int = TINY_DIMS["hidden"],
    layers: int = TINY_DIMS["layers"],
    context: int = 1024,
) -> Path:
    """A complete HF folder (fp32 safetensors, generation config, tokenizer, chat template) of a random Llama:
    4 heads (2 KV heads), MLP width ``2 * hidden``, tied embeddings, eos = pad = ``<|im_end|>``. The project's
    one tiny-model builder (tests, smoke runs, the tiny project of :mod:`icpo_core.engines.local.tiny`); vLLM's
    CPU attention needs ``hidden >= 128`` (head_dim 32)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    hf_tok = hf_tokenizer()
    ids = {
        "bos_token_id": hf_tok.bos_token_id,
        "eos_token_id": hf_tok.eos_token_id,
        "pad_token_id": hf_tok.pad_token_id,
    }
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=TINY_DIMS["heads"],
        num_key_value_heads=TINY_DIMS["kv_heads"],
        max_position_embeddings=context,
        tie_word_embeddings=True,
        **ids,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out_dir, safe_serialization=True)
    hf_tok.save_pretrained(out_dir)
    if not (out_dir / "chat_template.jinja").exists():
        (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out_dir


def write_tiny_gguf(path: str | Path, seed: int = 0) -> Path:
    """A float32 GGUF of a random 2-layer Llama with the tiny tokenizer (tokens, merges, chat template)."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    d = TINY_DIMS
    head_dim = d["hidden"] // d["heads"]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_block_count(d["layers"])
    w.add_context_length(d["context"])
    w.add_embedding_length(d["hidden"])
    w.add_feed_forward_length(d["intermediate"])
    w.add_head_count(d["heads"])
    w.add_head_count_kv(d["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    kv = d["kv_heads"] * head_dim
    # numpy shapes in torch layout (out, in); the writer stores GGUF's reversed dims.
    w.add_tensor("token_embd.weight", rand(len(tokens), d["hidden"]))
    w.add_tensor("output_norm.weight", np.ones(d["hidden"], dtype=np.float32))
    for i in range(d["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d["hidden"], dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(d["hidden"], d["hidden"]))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv, d["hidden"]))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv, d["hidden"]))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(d["hidden"], d["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d["hidden"], dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(d["intermediate"], d["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(d["intermediate"], d["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(d["hidden"], d["intermediate"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
