"""Generation backends for benchmarks: ``hf`` (transformers) and ``vllm`` (CUDA or CPU build, lazily imported).

Both render prompts the same way (:func:`render_prompt`: the model's own chat template with the generation
prompt) and return, per prompt, ``n`` :class:`Completion` objects. torch, transformers and vLLM are imported
where a backend starts (``import torch`` alone takes seconds, and ``icpo validate`` must not pay for it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from icpo_core.bench.registry import Sampling
from icpo_core.config import VllmParams
from icpo_core.errors import UserError
from icpo_core.rollout import vllm_engine
from icpo_core.rollout.eos import eos_token_ids, eos_token_ids_of_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens, the end-of-sequence token included when one was produced
    finish_reason: str  # "stop" (end of sequence) | "length" (hit max_tokens)


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    ids: list[int]

    @property
    def opens_thinking(self) -> bool:
        """The template ends the prompt inside ``<think>`` (the response then starts mid-thought)."""
        return self.text.rstrip().endswith("<think>")


class Backend(Protocol):
    name: str

    def render(self, messages: list[dict[str, str]]) -> RenderedPrompt: ...

    def generate(self, prompts: Sequence[RenderedPrompt], sampling: Sampling) -> list[list[Completion]]: ...

    def close(self) -> None: ...


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> RenderedPrompt:
    """The model's own chat template; a tokenizer without one gets the plain concatenated turns."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    # The template already holds any BOS token; tokenizing again must not add a second one.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return RenderedPrompt(text=text, ids=list(ids))


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"  # decoder-only batching: pad on the left so generation continues the prompt
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# -------------------------------------------------------------------------------------------- transformers


class HFBackend:
    """transformers ``generate``: batched with left padding, greedy at temperature 0, sampling otherwise."""

    name = "hf"

    def __init__(
        self, model_dir: str | Path, *, batch_size: int = 32, device: str = "auto", seed: int = 0
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("bench.device is 'cuda' but no CUDA device is available")
        self.device = device
        self.tokenizer = _load_tokenizer(self.model_dir)
        dtype = torch.float32 if device == "cpu" else "auto"  # CPU: fp32 is the fast path
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype).to(device).eval()
        self.batch_size = batch_size
        self.seed = seed
        self._eos = set(eos_token_ids(self.model, self.tokenizer))

    def render(self, messages: list[dict[str, str]]) -> RenderedPrompt:
        return render_prompt(self.tokenizer, messages)

    def generate(self, prompts: Sequence[RenderedPrompt], sampling: Sampling) -> list[list[Completion]]:
        import torch

        greedy = sampling.temperature == 0
        # Greedy samples are identical: generate one and repeat it n times.
        per_prompt = 1 if greedy else sampling.n
        step = max(1, self.batch_size // per_prompt)
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            batch = self.tokenizer.pad(
                {"input_ids": [p.ids for p in chunk]}, padding=True, return_tensors="pt"
            ).to(self.device)
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "do_sample": not greedy}
            if greedy:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k or 0,
                    num_return_sequences=per_prompt,
                )
                torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                gen = self.model.generate(
                    **batch,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self._eos),
                    **kwargs,
                )
            new = gen[:, batch["input_ids"].shape[1] :].tolist()
            for i in range(len(chunk)):
                seqs = [self._completion(ids) for ids in new[i * per_prompt : (i + 1) * per_prompt]]
                out.append(seqs * sampling.n if greedy else seqs)
        return out

    def _completion(self, ids: list[int]) -> Completion:
        end = next((j for j, t in enumerate(ids) if t in self._eos), None)
        kept = ids if end is None else ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(
            text=text,
            tokens=len(ids) if end is None else end + 1,
            finish_reason="length" if end is None else "stop",
        )

    def close(self) -> None:
        self.model = None


# -------------------------------------------------------------------------------------------------- vLLM


def prompt_seed(seed: int, ids: Sequence[int]) -> int:
    """A 63-bit seed per (run seed, prompt tokens): a prompt's samples do not depend on its chunk or on resumes."""
    digest = hashlib.sha256(f"{seed}|{','.join(map(str, ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class VLLMBackend:
    """vLLM offline engine (CUDA build or the CPU build): all prompts of a chunk in one call, ``n`` samples each.

    The engine is started by :func:`icpo_core.rollout.vllm_engine.start_llm` (the environment, in-process
    mode and no chunked prefill of the CPU build). Each prompt gets its own seed (:func:`prompt_seed`; vLLM seeds
    sample j with seed + j), and texts are decoded with the same tokenizer call as :class:`HFBackend`, so both
    backends return the same format. ``llm`` / ``sampling_params_cls`` / ``tokenizer`` can be injected (tests).
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        tensor_parallel: int = 1,
        seed: int = 0,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        vllm_cfg: Any = None,
        device: str = "auto",
        llm: Any = None,
        sampling_params_cls: Callable[..., Any] | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.seed = seed
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(self.model_dir)
        self._eos = sorted(eos_token_ids_of_dir(self.model_dir, self.tokenizer))
        if llm is None or sampling_params_cls is None:
            if device == "auto":
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                if llm is None:
                    llm = vllm_engine.start_llm(
                        self.model_dir,
                        vllm_cfg or VllmParams(),
                        device_type=device,
                        seed=seed,
                        max_model_len=max_model_len,
                        tensor_parallel=tensor_parallel,
                        gpu_memory_utilization=gpu_memory_utilization,
                    )
                if sampling_params_cls is None:
                    sampling_params_cls = vllm_engine.import_vllm().SamplingParams
            except vllm_engine.VLLMUnavailable as e:
                raise UserError(
                    f"bench.backend 'vllm': {e}. Install it with `make setup` (CPU build "
                    f"{vllm_engine.CPU_BUILD}) or `make setup-gpu` (CUDA), or set bench.backend: hf"
                ) from e
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls

    def render(self, messages: list[dict[str, str]]) -> RenderedPrompt:
        return render_prompt(self.tokenizer, messages)

    def sampling_params(self, sampling: Sampling, seed: int | None = None) -> Any:
        """One prompt's SamplingParams; greedy requests carry no seed."""
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = {
            "n": 1 if greedy else sampling.n,  # vLLM refuses n > 1 when greedy: one sample, repeated
            "temperature": sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": None if greedy else seed,
            "stop_token_ids": self._eos,
            "detokenize": False,
        }
        if sampling.top_k is not None and not greedy:
            kwargs["top_k"] = sampling.top_k
        return self.sampling_params_cls(**kwargs)

    def generate(self, prompts: Sequence[RenderedPrompt], sampling: Sampling) -> list[list[Completion]]:
        # Token ids, not text: the chat template already placed BOS; vLLM must not add another.
        requests = [{"prompt_token_ids": p.ids} for p in prompts]
        params = [self.sampling_params(sampling, prompt_seed(self.seed, p.ids)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = [[self._completion(list(c.token_ids), c.finish_reason) for c in o.outputs] for o in outputs]
        if sampling.temperature == 0:  # greedy samples are identical (as HFBackend does)
            result = [r * sampling.n if len(r) == 1 else r for r in result]
        if len(result) != len(prompts) or any(len(r) != sampling.n for r in result):
            raise RuntimeError("vLLM returned a different number of outputs than requested")
        return result

    def _completion(self, ids: list[int], finish_reason: str | None) -> Completion:
        end = next((j for j, t in enumerate(ids) if t in self._eos), None)
        kept = ids if end is None else ids[:end]
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            tokens=len(ids),
            finish_reason="length" if finish_reason == "length" else "stop",
        )

    def close(self) -> None:
        llm, self.llm = self.llm, None
        vllm_engine.shutdown_llm(llm)


def make_backend(kind: str, model_dir: str | Path, bench: Any, seed: int) -> Backend:
    """The backend of ``params.bench.backend`` for a model folder."""
    if kind == "hf":
        return HFBackend(model_dir, batch_size=bench.batch_size, device=bench.device, seed=seed)
    if kind == "vllm":
        return VLLMBackend(
            model_dir,
            tensor_parallel=bench.tensor_parallel,
            seed=seed,
            gpu_memory_utilization=bench.gpu_memory_utilization,
            vllm_cfg=getattr(bench, "vllm", None),
            device=getattr(bench, "device", "auto"),
        )
    raise UserError(f"bench.backend: unknown backend '{kind}' (hf | vllm)")
