"""Reference outputs from a bare vLLM engine (no Ray, no pdserve), run as a subprocess.

Usage: python bare_engine.py IN.json OUT.json, where IN holds `model`, `engine_kwargs`,
`max_tokens` and `cases` ([{"kind": "completion", "prompt": str} | {"kind": "chat",
"messages": [...]}], a case may add its own `max_tokens`, `tools` for the chat template, a
`json_schema` constraining the output, `stop` strings and a LoRA adapter `lora`: [name, id,
path]); OUT gets the greedy token ids and texts per case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(in_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    spec = json.loads(Path(in_path).read_text())
    llm = LLM(model=spec["model"], **spec["engine_kwargs"])
    token_ids: list[list[int]] = []
    texts: list[str] = []
    for case in spec["cases"]:
        schema = case.get("json_schema")
        params = SamplingParams(
            temperature=0.0, max_tokens=case.get("max_tokens", spec["max_tokens"]),
            stop=case.get("stop"),
            structured_outputs=None if schema is None else StructuredOutputsParams(json=schema))
        lora = LoRARequest(*case["lora"]) if case.get("lora") else None
        if case["kind"] == "completion":
            (output,) = llm.generate([case["prompt"]], params, use_tqdm=False,
                                     lora_request=lora)
        else:
            (output,) = llm.chat([case["messages"]], params, use_tqdm=False,
                                 tools=case.get("tools"), lora_request=lora)
        token_ids.append(list(output.outputs[0].token_ids))
        texts.append(output.outputs[0].text)
    Path(out_path).write_text(json.dumps({"token_ids": token_ids, "texts": texts}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
