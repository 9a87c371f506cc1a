"""Deterministic, offline LoRA adapters of the tiny model, for tests of multi-LoRA serving.

An adapter test needs what the tiny model gives the base test: greedy output that is confident
(no near-ties that flip between engines) and visibly different per adapter. So the adapters
are *constructed* from the base weights (:mod:`pdserve.tiny_weights`), each an exact edit of
the circuit of rank <= 28 (of 32):

* ``no-recall``: layer 0's offset-1 head writes nothing, so the induction head never finds a
  match and the model follows the context-free successor map ``f`` even where the context
  repeats;
* ``shifted``: layer 0's offset-2 head writes nothing (the same effect, and other KV), and
  layer 1's ``down_proj`` writes ``f`` of the next token id instead of ``f`` of the current
  one, a different confident chain.

Both change layer 1's keys, so a prompt's KV differs per adapter: a decode that ran with KV
computed without the adapter would show.

On a prompt that repeats itself the base model copies, ``no-recall`` walks ``f`` and
``shifted`` walks the shifted map: three different greedy continuations. Adapters are written
in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``), as vLLM loads any.
``pdserve://tiny/<adapter>`` names one (:func:`pdserve.models.resolve_adapter`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pdserve.tiny_model import (
    MARKER_FILE,
    SIZES,
    _file_lock,
    build_tiny_model,
    is_complete,
    pdserve_home,
)
from pdserve.tiny_weights import HEAD_DIM, SPECIAL_TOKENS, _layout

ADAPTER_FORMAT_VERSION = 1
BASE = "tiny"
ADAPTERS = ("no-recall", "shifted")
#: the layer-0 offset head each adapter silences (a different one: different KV per adapter)
ADAPTER_HEADS = {"no-recall": 0, "shifted": 1}
RANK = 32  # vLLM's `max_lora_rank` must be at least this


def adapter_dir(name: str) -> Path:
    return pdserve_home() / "adapters" / f"{BASE}-{name}-v{ADAPTER_FORMAT_VERSION}"


def build_tiny_adapter(name: str, out_dir: Path | None = None) -> Path:
    """Build (or reuse) one adapter directory of the tiny model (built first if needed)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r} of pdserve://{BASE}; known: "
                         f"{', '.join(ADAPTERS)}")
    final = (Path(out_dir) if out_dir is not None else adapter_dir(name)).expanduser().absolute()
    if is_complete(final):
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _write_adapter(tmp, name, build_tiny_model(BASE))
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def adapter_weights(name: str, base: dict[str, Any]) -> dict[str, Any]:
    """The adapter's LoRA factors (PEFT names), from the base model's tensors: each edit is
    ``B @ A`` with ``lora_alpha == r``, so vLLM applies it unscaled."""
    import torch

    spec = SIZES[BASE]
    lay = _layout(spec)
    km = lay.match.stop - lay.match.start
    # layer 0's offset head `g` copies the match code of token i-(g+1) into `prev[g]`; without
    # it the induction head never matches (and layer 1's keys, so the KV, change)
    head = ADAPTER_HEADS[name]
    o_a = torch.zeros(RANK, spec.heads * HEAD_DIM)
    o_b = torch.zeros(spec.hidden, RANK)
    for c in range(km):
        o_a[c, head * HEAD_DIM + c] = 1.0
        o_b[lay.prev[head].start + c, c] = -1.0
    weights = {"base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight": o_a,
               "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight": o_b}
    if name == "shifted":  # layer 1's successor neuron of token t writes f(t + 1)
        down = base["model.layers.1.mlp.down_proj.weight"][lay.out]  # (read width, inter)
        first = len(SPECIAL_TOKENS)
        shifted = down.clone()
        shifted[:, first:] = torch.roll(down[:, first:], shifts=-1, dims=1)
        d_a = torch.zeros(RANK, spec.intermediate)
        d_a[: down.shape[0]] = shifted - down
        d_b = torch.zeros(spec.hidden, RANK)
        for c, row in enumerate(range(lay.out.start, lay.out.stop)):
            d_b[row, c] = 1.0
        weights["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"] = d_a
        weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"] = d_b
    return {k: v.float().contiguous() for k, v in weights.items()}


def _write_adapter(out: Path, name: str, base_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    base = load_file(str(base_dir / "model.safetensors"))
    weights = adapter_weights(name, base)
    save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted({k.split(".")[-3] for k in weights})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": RANK,
              "lora_dropout": 0.0, "bias": "none", "target_modules": targets,
              "base_model_name_or_path": str(base_dir), "fan_in_fan_out": False}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    marker = {"format_version": ADAPTER_FORMAT_VERSION, "base": BASE, "adapter": name}
    (out / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True))
