"""Generation shared by the training engines and the bench: token bookkeeping (:mod:`.tokens`), the ids that end a
response (:mod:`.eos`) and the one place that configures and starts an offline vLLM engine (:mod:`.vllm_engine`).
Nothing here imports an engine: the local engine's vLLM rollouts and weight push are
:mod:`icpo_core.engines.local.vllm_rollout`."""
