"""The embedding pool: a vLLM engine in pooling mode, one per replica, like every other pool.

Its requests are vLLM's own `encode` with `PoolingParams(task="embed")`; the engine's metrics
(`vllm:prompt_tokens`, requests) show the work was done here, not by an in-process model.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ray import serve
from vllm import PoolingParams
from vllm.outputs import PoolingRequestOutput

from pdserve.deployments.engine.host import EngineHost


@serve.deployment
class EmbeddingServer(EngineHost):
    role = "embed"

    async def embed(
        self, inputs: list[str] | list[list[int]], params: PoolingParams | None = None,
        truncate_prompt_tokens: int | None = None,
    ) -> list[PoolingRequestOutput]:
        """One output per input (text or token ids), in order; the engine batches them.

        `truncate_prompt_tokens` keeps the first N tokens (-1: the model's maximum, which is
        what sentence-transformers does); without it a longer input is an error, as in vLLM.
        """
        params = params or PoolingParams(task="embed")
        limit = self.engine.model_config.max_model_len
        keep = limit if truncate_prompt_tokens == -1 else truncate_prompt_tokens
        tokenization = ({"truncate_prompt_tokens": keep, "truncation_side": "right"}
                        if keep is not None else None)

        async def one(item: str | list[int]) -> PoolingRequestOutput:
            if isinstance(item, list):
                prompt: Any = {"prompt_token_ids": item[:keep] if keep else item}
            else:
                prompt = item
            final = None
            async for output in self.engine.encode(prompt, params.clone(),
                                                   f"embd-{uuid.uuid4().hex}",
                                                   tokenization_kwargs=tokenization):
                final = output
            assert final is not None
            return final

        return list(await asyncio.gather(*(one(item) for item in inputs)))
