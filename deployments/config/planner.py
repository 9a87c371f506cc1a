"""The autoscaler's slow loop: a model's pools held at least at what the planner says the
load they see needs."""

from __future__ import annotations

from pydantic import Field

from pdserve.deployments.config.base import StrictModel


class PlannerFloor(StrictModel):
    """Dynamo's throughput planner, on pdserve's profile: every `interval_s`, each pool's floor
    becomes its observed arrival rate over what one engine carries within the model's SLO for
    the prompt and output lengths it saw (`pdserve plan`'s closed forms over the profile); the
    SLO policy still grows a pool above it, and never shrinks it below."""

    profile: str = Field(
        ..., min_length=1, description="A `pdserve profile` file of this model's engines (or "
        "one written from published figures), read when the app is built.")
    interval_s: float = Field(
        60.0, gt=0, description="How often a pool's floor is recomputed (the slow loop; the "
        "SLO decision runs every control-loop tick).")
