"""Whether a server without keys may start: only where nothing but this host can reach it.

The HTTP host is Ray Serve's (`http_options.host` of the serve config), which the app's own
config does not carry: an ingress replica asks Serve's controller for it (a Ray internal that
`tests/unit/test_auth.py` pins).
"""

from __future__ import annotations

import ipaddress

import ray

from pdserve.deployments.config.security import AuthConfig


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve_http_host() -> str | None:
    """The host Ray Serve's HTTP proxy binds (from the running Serve controller); None
    before Serve runs (an app built in Python ahead of `serve.run`)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if not ray.is_initialized():
        return None
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:  # no controller (yet)
        return None
    return str(ray.get(controller.get_http_config.remote(), timeout=30).host)


def check_exposure(auth: AuthConfig, has_keys: bool, host: str | None) -> None:
    """Refuse to serve an open API on a host other machines can reach."""
    if has_keys or auth.allow_unauthenticated or host is None or is_loopback(host):
        return
    raise ValueError(
        f"auth: Ray Serve's HTTP host is {host!r}, which other machines can reach, and no API "
        "key is configured: set `auth.keys_file` or `auth.keys_env` (keys from `pdserve keys "
        "new`), or `auth.allow_unauthenticated: true` to serve without keys")
