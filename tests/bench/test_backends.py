"""Generation backends: hf on a tiny random model; vLLM's requests with a stand-in engine, and for real on CPU."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from icpo_core.bench.backends import (
    Completion,
    HFBackend,
    RenderedPrompt,
    VLLMBackend,
    make_backend,
    prompt_seed,
    render_prompt,
)
from icpo_core.bench.registry import Sampling
from icpo_core.errors import UserError

MESSAGES = [
    [{"role": "user", "content": f"What is {i} + {i}? Put your final answer within \\boxed{{}}."}]
    for i in range(3)
]


@pytest.fixture(scope="module")
def hf(tiny_model):
    return HFBackend(tiny_model, batch_size=4, device="cpu", seed=0)


def test_render_uses_the_models_chat_template(hf):
    p = hf.render(MESSAGES[0])
    assert p.text.startswith("<|im_start|>user\nWhat is 0 + 0?")
    assert p.text.endswith("<|im_start|>assistant\n")
    assert p.ids == hf.tokenizer(p.text, add_special_tokens=False)["input_ids"]
    assert not p.opens_thinking


def test_hf_greedy_is_deterministic_and_repeated_n_times(hf):
    prompts = [hf.render(m) for m in MESSAGES]
    greedy = Sampling(n=2, temperature=0.0, top_p=1.0, top_k=None, max_tokens=8)
    out = hf.generate(prompts, greedy)
    assert len(out) == 3 and all(len(c) == 2 and c[0] == c[1] for c in out)
    assert all(1 <= c.tokens <= 8 and c.finish_reason in ("stop", "length") for cs in out for c in cs)
    # batching (left padding) does not change a greedy answer
    alone = hf.generate(prompts[2:], greedy)
    assert alone[0][0].text == out[2][0].text
    assert hf.generate(prompts, greedy) == out


def test_hf_sampling_is_seeded(hf):
    prompts = [hf.render(m) for m in MESSAGES[:2]]
    s = Sampling(n=3, temperature=1.0, top_p=1.0, top_k=None, max_tokens=12)
    a = hf.generate(prompts, s)
    assert [len(c) for c in a] == [3, 3]
    assert len({c.text for c in a[0]}) > 1  # a random model sampled at T=1 gives different texts
    assert hf.generate(prompts, s) == a


def test_thinking_template_is_detected(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tok.chat_template += "{% if add_generation_prompt %}{{ '<think>\\n' }}{% endif %}"
    p = render_prompt(tok, MESSAGES[0])
    assert p.text.endswith("<think>\n") and p.opens_thinking


class FakeLLM:
    """Records what vLLM's LLM.generate would receive; answers like vLLM's RequestOutput."""

    def __init__(self, n_out=None):
        self.calls = []
        self.n_out = n_out

    def generate(self, requests, sampling_params, use_tqdm=False):
        self.calls.append((requests, sampling_params))
        return [
            SimpleNamespace(
                outputs=[
                    SimpleNamespace(
                        token_ids=list(req["prompt_token_ids"][: j + 1]),
                        finish_reason="stop" if j else "length",
                    )
                    for j in range(self.n_out or sp.n)
                ]
            )
            for req, sp in zip(requests, sampling_params, strict=True)
        ]


def fake_sampling_params(**kwargs):
    return SimpleNamespace(**kwargs)


def test_vllm_backend_builds_requests_up_to_the_gpu_boundary(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    llm = FakeLLM()
    backend = VLLMBackend(
        tiny_model, seed=7, llm=llm, sampling_params_cls=fake_sampling_params, tokenizer=tok
    )
    prompts = [backend.render(m) for m in MESSAGES]
    out = backend.generate(prompts, Sampling(n=4, temperature=0.6, top_p=0.95, top_k=50, max_tokens=64))
    [(requests, sps)] = llm.calls
    # token ids of the chat-templated prompt, so vLLM adds no second BOS
    assert requests == [{"prompt_token_ids": p.ids} for p in prompts]
    assert requests[0]["prompt_token_ids"] == tok.apply_chat_template(
        MESSAGES[0], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    # one seed per prompt, from the run seed and the prompt's tokens (not from its position in a chunk)
    seeds = [prompt_seed(7, p.ids) for p in prompts]
    assert len(set(seeds)) == 3 and prompt_seed(8, prompts[0].ids) != seeds[0]
    for sp, seed in zip(sps, seeds, strict=True):
        assert vars(sp) == {
            "n": 4,
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 50,
            "max_tokens": 64,
            "seed": seed,
            "stop_token_ids": [tok.eos_token_id],
            "detokenize": False,
        }
    assert [len(c) for c in out] == [4, 4, 4]
    ids = prompts[1].ids[:3]  # the stand-in "generates" the prompt's first j + 1 tokens
    text = tok.decode(ids, skip_special_tokens=True)
    assert out[1][2] == Completion(text=text, tokens=3, finish_reason="stop")
    assert out[0][0].finish_reason == "length"
    backend.generate(prompts, Sampling(n=1, temperature=0.0, top_p=0.9, top_k=None, max_tokens=8))
    assert [len(c) for c in backend.generate(prompts[:1], Sampling(3, 0.0, 1.0, None, 8))] == [3]
    assert vars(llm.calls[-1][1][0])["n"] == 1  # vLLM refuses n > 1 when greedy
    greedy = vars(llm.calls[-1][1][0])
    assert "top_k" not in greedy and greedy["top_p"] == 1.0 and greedy["temperature"] == 0.0
    assert greedy["seed"] is None


def test_vllm_backend_checks_output_counts(tiny_model):
    backend = VLLMBackend(tiny_model, llm=FakeLLM(n_out=1), sampling_params_cls=fake_sampling_params)
    with pytest.raises(RuntimeError, match="different number"):
        backend.generate([RenderedPrompt("x", [1])], Sampling(2, 1.0, 1.0, None, 4))


def test_vllm_missing_is_a_user_error(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, also on a GPU machine
    bench = SimpleNamespace(tensor_parallel=1, gpu_memory_utilization=0.5, batch_size=4, device="cpu")
    with pytest.raises(UserError, match="bench.backend: hf"):
        make_backend("vllm", tiny_model, bench, 0)
    with pytest.raises(UserError, match="unknown backend"):
        make_backend("tgi", tiny_model, bench, 0)


# ---------------------------------------------------------------------------------- vLLM for real (CPU build)


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory):
    """The tiny model with head_dim 64 (vLLM's CPU attention has no head_dim-16 kernels)."""
    from icpo_core.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", hidden=256)


@pytest.fixture(scope="module")
def real_vllm(vllm_model):
    from icpo_core.config import BenchParams

    backend = make_backend(
        "vllm", vllm_model, BenchParams(device="cpu", vllm={"kv_cache_gib": 1, "dtype": "float32"}), seed=3
    )
    yield backend
    backend.close()


def test_vllm_and_hf_backends_agree_on_greedy_decoding(vllm_model, real_vllm):
    hf = HFBackend(vllm_model, batch_size=2, device="cpu", seed=3)
    messages = [*MESSAGES, [{"role": "user", "content": "Tom has 7 marbles and gets 6 more."}]]
    prompts = [hf.render(m) for m in messages]
    assert [real_vllm.render(m) for m in messages] == prompts
    greedy = Sampling(n=2, temperature=0.0, top_p=1.0, top_k=None, max_tokens=12)
    theirs = hf.generate(prompts, greedy)
    ours = real_vllm.generate(prompts, greedy)
    assert ours == theirs  # texts, token counts (EOS included) and finish reasons


def test_vllm_backend_sampling_is_seeded_per_prompt(real_vllm):
    prompts = [real_vllm.render(m) for m in MESSAGES]
    s = Sampling(n=3, temperature=1.0, top_p=1.0, top_k=None, max_tokens=12)
    a = real_vllm.generate(prompts, s)
    assert [len(c) for c in a] == [3, 3, 3] and len({c.text for c in a[0]}) > 1
    assert real_vllm.generate(prompts, s) == a
    # a prompt draws the same samples in another chunk (resumed benches chunk differently)
    assert real_vllm.generate(prompts[2:], s) == a[2:]
