"""Reference outputs from a bare vLLM engine (no Ray, no pdserve), run as a subprocess.

Usage: python bare_engine.py IN.json OUT.json, where IN holds `model`, `engine_kwargs`,
`max_tokens` and `cases` ([{"kind": "completion", "prompt": str} | {"kind": "chat",
"messages": [...]}]); OUT gets the greedy token ids per case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(in_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(in_path).read_text())
    llm = LLM(model=spec["model"], **spec["engine_kwargs"])
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    token_ids: list[list[int]] = []
    for case in spec["cases"]:
        if case["kind"] == "completion":
            (output,) = llm.generate([case["prompt"]], params, use_tqdm=False)
        else:
            (output,) = llm.chat([case["messages"]], params, use_tqdm=False)
        token_ids.append(list(output.outputs[0].token_ids))
    Path(out_path).write_text(json.dumps({"token_ids": token_ids}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
