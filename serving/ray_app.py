"""The gateway as a Ray Serve application: a deployment whose FastAPI ingress is serving/app.py's app.

The retrieval layer is built once per replica from the config (with backend `ray` that is a handle to
shared retriever actors); the engine is already running (the launcher started it, or it is a URL).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ray import serve

from serving.app import create_app, set_default_gateway
from serving.config import ServeConfig

log = logging.getLogger("raft.serve")

# The ingress app. Routes find the replica's gateway through set_default_gateway (one gateway per
# replica process), so the very same router serves in-process under uvicorn and here.
app = create_app()


@serve.deployment(name="RaftGateway")
@serve.ingress(app)
class RaftGateway:
    def __init__(self, cfg: dict[str, Any], engine_url: str, retriever: Optional[Any] = None):
        from serving.gateway import Gateway
        from serving.retriever import open_retriever

        config = ServeConfig.model_validate(cfg)
        logging.getLogger("raft.serve").setLevel(config.log_level.upper())
        self.gateway = Gateway.from_config(config, engine_url,
                                           retriever if retriever is not None else open_retriever(config.retrieval))
        set_default_gateway(self.gateway)

    async def check_health(self) -> None:
        """Ray Serve's replica health check: the process is fine even when the engine is down (that is
        reported by /health and 503s, and must not make Serve restart the gateway)."""
        return None


def build_application(cfg: ServeConfig, engine_url: str, retriever: Optional[Any] = None):
    """The bound application; serve.run it. `retriever` (picklable) overrides the configured one."""
    r = cfg.ray
    dep = RaftGateway.options(num_replicas=r.num_replicas, max_ongoing_requests=r.max_ongoing_requests,
                              ray_actor_options={"num_cpus": r.num_cpus},
                              graceful_shutdown_timeout_s=cfg.shutdown_timeout_s)
    return dep.bind(replica_config(cfg), engine_url, retriever)


def replica_config(cfg: ServeConfig) -> dict[str, Any]:
    """The config a replica is built from, with secrets read from the driver's environment resolved in.

    Replicas may run on other nodes whose environment lacks RAFT_SERVE_API_KEYS / RAFT_ENGINE_API_KEY;
    left to read them there, a cluster gateway would silently run open.
    """
    import os

    data = cfg.model_dump(mode="json")
    data["auth"]["keys"] = cfg.auth.resolved_keys()
    data["engine"]["api_key"] = cfg.engine.api_key or os.environ.get("RAFT_ENGINE_API_KEY")
    return data


def run_on_ray(cfg: ServeConfig, engine_url: str, retriever: Optional[Any] = None,
               app_name: str = "raft-gateway", blocking: bool = False):
    """Start Serve's HTTP proxy on cfg.host:cfg.port and deploy the gateway; returns the handle."""
    from serving.app import KEEP_ALIVE_S

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "keep_alive_timeout_s": KEEP_ALIVE_S})
    return serve.run(build_application(cfg, engine_url, retriever), name=app_name, route_prefix="/",
                     blocking=blocking)
