"""One served model in the ingress: vLLM's OpenAI handlers (`model`) over an `EngineClient`
whose engine is the model's pool graph (`engine_client`), the Serve handles as orchestrator calls
and the PD plan (`pool_calls`), and the model's request metrics (`metrics`)."""
