"""Which scope each route needs: deny by default, so a route added later is covered too."""

from __future__ import annotations

import re

from pdserve.deployments.config.security import Scope

#: Answered without a key: a load balancer's probe (it says only ok / unhealthy).
PUBLIC = frozenset({("GET", "/health")})

ANY = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_RULES: tuple[tuple[frozenset[str], re.Pattern[str], Scope], ...] = (
    (ANY - {"GET", "HEAD"}, re.compile(r"^/v1/pipelines/[^/]+/documents(/.*)?$"),
     "documents:write"),
    (ANY, re.compile(r"^/v1/(pools|admin)(/.*)?$"), "admin"),
    (ANY, re.compile(r"^/v1/(load|unload)_lora_adapter$"), "admin"),
    (ANY, re.compile(r"^/metrics$"), "admin"),
)


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs (`None`: public); anything not named needs `inference`,
    unknown paths included (so only an admitted caller learns what exists)."""
    method = method.upper()
    if (method, path) in PUBLIC or (method == "HEAD" and ("GET", path) in PUBLIC):
        return None
    for methods, pattern, scope in _RULES:
        if (method in methods or method not in ANY) and pattern.match(path):
            return scope
    return "inference"
