"""API keys -> tenants. A tenant sees only documents whose metadata `tenant` is its own (the gateway adds
that filter to every search; a request cannot override it) and only the models it is allowed.

Document ids are per tenant: a tenant's id `x` is stored as `<tenant>\x1f<x>`, so two tenants creating
the same id at once make two documents (there is nothing to check-then-write, hence nothing to race),
and no answer ever depends on, or reveals, another tenant's ids. Clients only ever see their own `x`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from typing import Any, Optional

from serving.config import AuthConfig
from serving.errors import unauthorized

ID_SEP = "\x1f"  # ASCII unit separator: no id a client may send, nor any file path, contains it


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant (None when auth is off: one open, unscoped tenant)."""

    tenant: Optional[str]
    models: Optional[frozenset[str]] = None  # None: every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def doc_key(self, doc_id: str) -> str:
        """The stored id of this tenant's document `doc_id`."""
        return doc_id if self.tenant is None else f"{self.tenant}{ID_SEP}{doc_id}"

    def public_id(self, stored: str) -> str:
        """What this tenant calls a stored document id (ids of documents indexed offline stay as they are)."""
        prefix = f"{self.tenant}{ID_SEP}"
        return stored[len(prefix):] if self.tenant is not None and stored.startswith(prefix) else stored

    def public_hit(self, hit: Any) -> Any:
        """A search hit as this tenant may see it (its own document id)."""
        public = self.public_id(hit.chunk.doc_id)
        return hit if public == hit.chunk.doc_id else replace(hit, chunk=replace(hit.chunk, doc_id=public))

    def scope_filter(self, requested: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """The request's filter with the tenant forced in (any `tenant` key in the request is replaced);
        `doc_id` values name this tenant's documents, those it ingested and those indexed offline."""
        if self.tenant is None:
            return dict(requested) if requested else None
        scoped = {k: v for k, v in (requested or {}).items() if k != "tenant"}
        if "doc_id" in scoped:
            ids = scoped["doc_id"] if isinstance(scoped["doc_id"], (list, tuple)) else [scoped["doc_id"]]
            scoped["doc_id"] = [x for v in ids
                                for x in ((self.doc_key(v), v) if isinstance(v, str) else (v,))]
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
