"""Prefix-aware routing: the types that cross processes (`types`), the prefix index and the
KV-event subscriber that keeps it exact, prompt block hashes, per-pool state, weighted scorers,
the PD plan, and Ray Serve request routers."""
