"""The engine a profile describes, as vLLM builds it: the check that a profile fits the served
model, and vLLM's `EngineArgs` the simulated schedulers are built from (from the served model,
or from the architecture a hand-written profile carries)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pdserve.simulation.profile_file import Profile


def check_profile_fits(profile: Profile, model: Any) -> None:
    """The profile must be of the model and engine arguments the config serves: the simulated
    engines are built from the profile, the pools and routing from the config."""
    if profile.model != model.model or profile.engine_kwargs != model.engine_kwargs:
        differs = sorted(k for k in set(profile.engine_kwargs) | set(model.engine_kwargs)
                         if profile.engine_kwargs.get(k) != model.engine_kwargs.get(k))
        raise ValueError(f"the profile is of {profile.model!r} with other engine arguments "
                         f"({', '.join(differs) or 'none'}) than model {model.model_id!r} of the "
                         f"config ({model.model!r}): profile that config")


def architecture_dir(hf_config: dict[str, Any]) -> Path:
    """A folder holding only `config.json` (what vLLM's engine config reads), kept in the
    cache under its content's hash."""
    text = json.dumps(hf_config, sort_keys=True, indent=1)
    folder = Path.home() / ".cache" / "pdserve" / "architectures" / hashlib.sha256(
        text.encode()).hexdigest()[:16]
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json.tmp").write_text(text)
        (folder / "config.json.tmp").replace(folder / "config.json")
    return folder


def engine_args(profile: Profile, model: Any) -> Any:
    """vLLM's `EngineArgs` of the profiled engine (the simulated schedulers are built from
    them): the served model, or the architecture the profile carries."""
    from vllm.engine.arg_utils import EngineArgs

    from pdserve.models import resolve_model

    path = (architecture_dir(profile.hf_config) if profile.hf_config is not None
            else resolve_model(model.model))
    kwargs = {"model": str(path), **profile.engine_kwargs}
    if profile.hf_config is not None:  # an architecture without its tokenizer
        kwargs["skip_tokenizer_init"] = True
    return EngineArgs(**kwargs)
