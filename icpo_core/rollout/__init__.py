"""Generation shared by the training engines and the bench: token bookkeeping (:mod:`.tokens`) and the one place
that configures, starts and updates an offline vLLM engine (:mod:`.vllm_engine`)."""
