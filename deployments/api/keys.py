"""API keys as the ingress holds them: SHA-256 hashes read from a file or an environment
variable, compared in constant time, re-read when the file changes (rotation without a
redeploy), and the caller each admitted key stands for."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pdserve.deployments.config.security import (
    DEFAULT_KEYS_ENV,
    ApiKeyEntry,
    ApiKeysFile,
    AuthConfig,
    RateLimits,
    Scope,
)

logger = logging.getLogger(__name__)

#: How often a request may trigger a look at the keys file's modification time.
RELOAD_CHECK_S = 2.0
KEY_PREFIX = "pds-"


def file_stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits (so a plain SHA-256 of it is a safe stored form)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key's name, scopes, model allow-list (`None`: any) and
    prefix-cache namespace (`None`: the shared cache of a server without keys)."""

    name: str
    scopes: frozenset[Scope]
    models: frozenset[str] | None
    cache_namespace: str | None = None
    rate_limits: RateLimits | None = None

    def may(self, scope: Scope) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


#: The caller of a server without keys (loopback or `allow_unauthenticated`): may do anything.
ANONYMOUS = Caller("anonymous", frozenset({"admin"}), None)


def parse_entries(text: str, source: str) -> list[ApiKeyEntry]:
    """A keys document (YAML or JSON) → its entries; a bad one is named with its source."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
        return ApiKeysFile.model_validate(doc or {}).keys
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


class KeyRing:
    """The keys an `AuthConfig` names, as hashes; `identify` is constant-time over all of them."""

    def __init__(self, config: AuthConfig, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.env_name = config.keys_env or (None if config.keys_file else DEFAULT_KEYS_ENV)
        self._file_stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._env_entries = self._read_env()
        self._entries = self._index(self._read_file())

    def _read_env(self) -> list[ApiKeyEntry]:
        if not self.env_name:
            return []
        text = self.environ.get(self.env_name)
        if text is None and self.config.keys_env:
            raise ValueError(f"auth.keys_env: the environment variable {self.env_name} is not "
                             "set where the ingress runs")
        return parse_entries(text, f"auth.keys_env ({self.env_name})") if text else []

    def _read_file(self) -> list[ApiKeyEntry]:
        if not self.config.keys_file:
            return []
        path = Path(self.config.keys_file).expanduser()
        try:
            self._file_stamp = file_stamp(path)
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"auth.keys_file: cannot read {path}: {exc.strerror}") from None
        return parse_entries(text, f"auth.keys_file ({path})")

    def _index(self, file_entries: list[ApiKeyEntry]) -> list[tuple[bytes, Caller]]:
        entries = self._env_entries + file_entries
        try:
            ApiKeysFile(keys=entries)  # names and hashes unique across both sources
        except ValueError as exc:
            raise ValueError(f"auth: {exc}") from None
        return [(bytes.fromhex(e.sha256), Caller(
            e.name, frozenset(e.scopes), None if e.models is None else frozenset(e.models),
            f"tenant:{e.tenant}" if e.tenant else f"key:{e.name}", e.rate_limits))
            for e in entries]

    @property
    def enabled(self) -> bool:
        """Whether keys are on (then every route but `/health` needs one): a source is named
        (an empty keys file admits nobody until keys are added) or the default one has keys."""
        return bool(self._entries or self.config.keys_file or self.config.keys_env)

    def reload_if_changed(self, now: float | None = None) -> None:
        """Re-read the keys file when it changed (modification time in ns, size or inode; at
        most every few seconds); a file that became unreadable or invalid keeps the keys read
        before. Replace the file by a rename, so a half-written one is never read."""
        now = time.monotonic() if now is None else now
        if not self.config.keys_file or now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_S
        try:
            if file_stamp(Path(self.config.keys_file).expanduser()) == self._file_stamp:
                return
            self._entries = self._index(self._read_file())
        except (ValueError, OSError) as exc:
            logger.warning("%s; keeping the keys read before", exc)

    def identify(self, key: str) -> Caller | None:
        """The caller `key` admits, or None; compares against every entry (constant time)."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for stored, caller in self._entries:
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


def tenant_cache_salt(caller: Caller, client_salt: str | None) -> str | None:
    """The `cache_salt` a request runs with: its caller's namespace folded with the client's
    own salt (vLLM's per-request isolation), so no client can choose another's namespace. It
    enters the first block's hash in the engines and in the router alike."""
    if caller.cache_namespace is None:
        return client_salt
    return hashlib.sha256(json.dumps([caller.cache_namespace, client_salt]).encode()).hexdigest()
