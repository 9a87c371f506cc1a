"""The decode pool and the PD path that ends on it: its deployments (`server`), the decode call
(`request`), and the orchestration of one request through the pools (`orchestrator`), which
runs in the caller (the ingress): a dead replica cannot resume its own requests."""
