"""KV transfer over NIXL: the connector config per engine (`connector`), pdserve's quiet NIXL
connector (`quiet_nixl`, loaded by vLLM in the engine processes), side-channel ports (`ports`)
and the transfer-params shape (`params`)."""
