"""The engine host every pool deployment is built on (`host.EngineHost`), split by concern:
engine arguments, placement on the host, reports to routers and autoscaler, output streaming."""
