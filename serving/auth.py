"""API keys -> tenants. A tenant sees only documents whose metadata `tenant` is its own (the gateway adds
that filter to every search; a request cannot override it) and only the models it is allowed."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Optional

from serving.config import AuthConfig
from serving.errors import unauthorized


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant (None when auth is off: one open, unscoped tenant)."""

    tenant: Optional[str]
    models: Optional[frozenset[str]] = None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def scope_filter(self, requested: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """The request's filter with the tenant forced in (any `tenant` key in the request is replaced)."""
        if self.tenant is None:
            return dict(requested) if requested else None
        scoped = {k: v for k, v in (requested or {}).items() if k != "tenant"}
        scoped["tenant"] = self.tenant
        return scoped


OPEN = Principal(tenant=None)


class Authenticator:
    def __init__(self, cfg: AuthConfig):
        self.keys = cfg.resolved_keys()
        self.tenant_models = {t: frozenset(m) for t, m in cfg.tenant_models.items()}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: Optional[str]) -> Principal:
        """`Authorization: Bearer KEY` -> Principal; 401 when auth is on and the key is missing or wrong."""
        if not self.enabled:
            return OPEN
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("Missing API key: send `Authorization: Bearer YOUR_KEY`.")
        given = authorization[7:].strip()
        for key, tenant in self.keys.items():  # constant-time compare: keys must not leak by timing
            if hmac.compare_digest(key.encode(), given.encode()):
                return Principal(tenant, self.tenant_models.get(tenant))
        raise unauthorized("Incorrect API key provided.")
