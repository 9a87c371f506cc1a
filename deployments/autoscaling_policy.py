"""The import path YAML configs written before the `autoscaling/` package name:
`pdserve.deployments.autoscaling_policy:SLOAutoscalingPolicy` (and `pool_policy`) keep working;
new configs say `pdserve.deployments.autoscaling.policy:SLOAutoscalingPolicy`."""

from pdserve.deployments.autoscaling.policy import SLOAutoscalingPolicy, pool_policy

__all__ = ["SLOAutoscalingPolicy", "pool_policy"]
