"""The app a `serve_configs/*.yaml` describes, read with the same pydantic models the app
builder validates (so a bad field is named here too)."""

from __future__ import annotations

from pathlib import Path

import yaml

from pdserve.deployments.config.app import AppConfig
from pdserve.deployments.config.models import ModelConfig


def load_app(path: Path, application: int = 0) -> AppConfig:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        args = doc["applications"][application]["args"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: no applications[{application}].args") from e
    return AppConfig.model_validate(args)


def pick_model(app: AppConfig, model_id: str | None) -> ModelConfig:
    """The model named `model_id` (its id or an alias), or the only generating model."""
    generating = [m for m in app.models if m.mode != "embed"]
    if model_id is None:
        if len(generating) != 1:
            raise ValueError("the config serves several models; name one with --model "
                             f"({', '.join(m.model_id for m in generating)})")
        return generating[0]
    for model in generating:
        if model_id in model.names():
            return model
    raise ValueError(f"no generating model {model_id!r} in the config "
                     f"({', '.join(m.model_id for m in generating)})")


#: The SLO policies' import paths: the module's, and the older top-level one kept for configs.
SLO_APP_POLICIES = ("pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy",
                    "pdserve.deployments.autoscaling_policy:SLOAutoscalingPolicy")
SLO_POOL_POLICIES = ("pdserve.deployments.autoscaling.policy:pool_policy",
                     "pdserve.deployments.autoscaling_policy:pool_policy")


def autoscaling_policy(path: Path, model: ModelConfig, application: int = 0) -> str:
    """Which of `autoscaler.POLICIES` the config runs for `model`'s autoscaled pools: the
    application's `SLOAutoscalingPolicy`, else the per-pool SLO policy the app builder sets
    for a model with `slo`, else Ray Serve's default. Another policy cannot be simulated."""
    doc = yaml.safe_load(Path(path).read_text())
    app_policy = (doc["applications"][application].get("autoscaling_policy") or {})
    function = app_policy.get("policy_function")
    if function is not None:
        if function not in SLO_APP_POLICIES:
            raise ValueError(f"{path}: autoscaling_policy {function!r} cannot be simulated "
                             f"(known: {SLO_APP_POLICIES[0]})")
        return "slo_app"
    pool_policies = {(p.autoscaling_config or {}).get("policy", {}).get("policy_function")
                     for p in model.pools().values()} - {None}
    if pool_policies - set(SLO_POOL_POLICIES):
        raise ValueError(f"{path}: autoscaling_config.policy {sorted(pool_policies)} cannot be "
                         f"simulated (known: {SLO_POOL_POLICIES[0]})")
    return "slo" if model.slo is not None or pool_policies else "ray_default"


def with_planner(model: ModelConfig, profile: Path | None, interval_s: float = 60.0
                 ) -> ModelConfig:
    """`model` with its autoscaler's slow loop run on `profile` (as `planner:` in the config
    would); unchanged without one."""
    if profile is None:
        return model
    from pdserve.deployments.config.planner import PlannerFloor

    if model.planner is not None:  # the config's own period stays
        interval_s = model.planner.interval_s
    return model.model_copy(update={"planner": PlannerFloor(profile=str(profile),
                                                            interval_s=interval_s)})
