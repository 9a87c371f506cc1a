"""Profile the engine on the hardware at hand and simulate the whole graph over vLLM's own
scheduler with profiled step times (`pdserve profile`, `pdserve simulate`)."""
