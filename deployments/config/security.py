"""Who may call the HTTP API (`auth:`) and how large a request may be (`limits:`).

Keys themselves never live in a serve config: `auth` names where their hashes are (a file or an
environment variable); `pdserve keys new` prints a key and the entry that admits it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pdserve.deployments.config.base import StrictModel

Scope = Literal["inference", "documents:write", "admin"]
#: The environment variable read for key entries when `auth` names no source.
DEFAULT_KEYS_ENV = "PDSERVE_API_KEYS"


class RateLimits(StrictModel):
    """A key's budget; every bound is optional."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests per minute.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt + completion tokens per minute (streams included, "
        "counted whether or not the client asked for usage).")
    concurrent_requests: int | None = Field(
        None, ge=1, description="Requests in flight at once, per ingress replica.")


class ApiKeyEntry(StrictModel):
    """One admitted key, by the SHA-256 of its text (the key itself is never stored)."""

    name: str = Field(..., min_length=1, description="Who holds the key (logs, errors).")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$",
                        description="Lower-case hex SHA-256 of the key's UTF-8 text.")
    scopes: list[Scope] = Field(
        default_factory=lambda: ["inference"],
        description="`inference` (completions, chat, embeddings, models, reading a pipeline), "
        "`documents:write` (a pipeline's documents), `admin` (everything, incl. pools, drains, "
        "debug output).",
    )
    models: list[str] | None = Field(
        None, description="Models and pipelines this key may name; all when absent.")
    rate_limits: RateLimits | None = Field(None, description="Per-key limits (429 beyond).")
    tenant: str | None = Field(
        None, min_length=1, description="Keys naming the same tenant share one prefix-cache "
        "namespace; without it each key has its own (no caller can time another's prompts).")


class ApiKeysFile(StrictModel):
    """What a keys file or the keys environment variable holds (YAML or JSON)."""

    keys: list[ApiKeyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ApiKeysFile:
        for attr in ("name", "sha256"):
            values = [getattr(k, attr) for k in self.keys]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"keys: {attr} used twice: {dupes if attr == 'name' else '…'}")
        return self


class AuthConfig(StrictModel):
    """API keys for every route but a minimal `/health`."""

    keys_file: str | None = Field(
        None, description="A YAML/JSON file of key entries (`keys: [{name, sha256, scopes, "
        "models}]`), read on each ingress replica's node and re-read when it changes.")
    keys_env: str | None = Field(
        None, description=f"An environment variable holding the same document (default "
        f"`{DEFAULT_KEYS_ENV}` when no `keys_file` is named), read where the ingress runs.")
    allow_unauthenticated: bool = Field(
        False, description="Serve without keys on an HTTP host that is not loopback. Without "
        "it such a config refuses to start unless keys are configured.")
    allowed_hosts: list[str] | None = Field(
        None, description="`Host` header values (without port) the ingress answers; others "
        "get 400 (guards a loopback server against DNS rebinding). All when absent.")


class LimitsConfig(StrictModel):
    """Request sizes the ingress refuses with a clear 4xx before anything reaches an engine."""

    max_body_bytes: int = Field(
        16 * 2**20, ge=1024, description="Request body bytes; larger → 413, refused before "
        "the body is read whole (with or without `Content-Length`).")
    max_n: int = Field(16, ge=1, description="`n` (choices per request) at most.")
    max_prompts: int = Field(
        256, ge=1, description="Prompts in one completions request (`prompt` as a batch).")
    max_embedding_inputs: int = Field(2048, ge=1, description="Inputs per embeddings request.")
    max_documents_per_upsert: int = Field(1000, ge=1, description="Documents per upsert call.")
    max_document_bytes: int = Field(2**20, ge=1, description="UTF-8 bytes per document.")
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Requests one ingress replica serves at once (streams until "
        "they end); more get 503 with `Retry-After` at once. Below `ingress."
        "max_ongoing_requests`, past which Ray's proxy queues them instead; default: 3/4 of "
        "it.")
