"""`raft serve`: start the engine, the retrieval layer and the OpenAI-compatible gateway.

SIGTERM stops it as Ctrl-C does, on both runners: requests in flight get serve.shutdown_timeout_s to
finish, then the gateway, the engine's whole process group and the local Ray this command started are
stopped. Without that, SIGTERM (what a service manager or `docker stop` sends) would end the Python
process without its cleanup and leave the engine running on its port.
"""

from __future__ import annotations

import argparse
import signal
import time

HELP = "serve the RAFT model behind retrieval with citations (OpenAI-compatible API)"
EXAMPLE = """raft serve --config configs/serve_cpu.yaml
raft serve --config configs/serve_vllm.yaml serve.port=9000 serve.retrieval.top_k=3
raft serve --config configs/serve_cpu.yaml runner=uvicorn     # no Ray: the gateway in this process
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from raft.commands.common import add_config_arguments

    add_config_arguments(p, "serve")
    p.add_argument("--engine-log", metavar="FILE", help="where the launched engine writes its log "
                   "(default: a temporary file, named at start)")
    p.add_argument("--print-engine-command", action="store_true",
                   help="print the engine command line the config implies, and exit")


def run(args: argparse.Namespace) -> int:
    import shlex

    from rich.console import Console

    from raft.commands.common import load_command_config
    from serving.config import ServeConfig
    from serving.errors import redact, redact_logs
    from serving.launchers import engine_command, launch_engine, resolve_engine_paths

    console = Console(stderr=True)
    cfg = load_command_config(args, ServeConfig, "serve")
    if cfg is None:
        return 0
    resolve_engine_paths(cfg, log=lambda m: console.print(m, highlight=False))
    if args.print_engine_command:
        cmd = engine_command(cfg)
        print(shlex.join(cmd) if cmd else f"(no engine to start: using {cfg.engine.url})")
        return 0

    redact_logs()
    t0 = time.monotonic()
    _preflight(cfg, console)
    proc = None
    own_ray: list[bool] = []
    _stop_on_sigterm()
    try:
        with console.status(f"starting the {cfg.engine.kind} engine ..."):
            url, proc = launch_engine(cfg, args.engine_log)
        console.print(f"engine: {cfg.engine.kind} at {redact(url)}"
                      + (f" (log: {proc.log_path})" if proc else ""))
        if cfg.runner == "uvicorn":
            _run_uvicorn(cfg, url, console, t0, own_ray)
        else:
            _run_ray(cfg, url, console, t0, own_ray)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see _stop_on_sigterm)
        console.print("stopping ...")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        if proc is not None:
            proc.stop()
            console.print("engine stopped")
        if own_ray:
            import ray

            ray.shutdown()
            console.print("Ray stopped")
    return 0


def _preflight(cfg, console) -> None:
    """Everything that can be checked before the engine starts (which takes seconds to minutes): the index
    opens (checksums verified, embedder matching), the reranker loads, the model and adapters exist, and the
    gateway's and the engine's ports are free."""
    from raft.errors import RaftError
    from serving.launchers import check_engine_model, port_in_use

    r = cfg.retrieval
    if r.backend != "none":
        from retrieval.index import RetrievalIndex

        with console.status(f"checking the index {r.index_dir} ..."):
            RetrievalIndex.open(r.index_dir, embedder=r.embedder).close()
        if r.rerank.model:
            from raft.commands.common import absolute
            from retrieval.rerank import Reranker

            # as the index: a wrong reranker path fails here, not after the engine started (local: loaded once)
            r.rerank.model = absolute(r.rerank.model, must_exist=True)
            with console.status(f"loading the reranker {r.rerank.model} ..."):
                Reranker.from_config(r.rerank).load()
    check_engine_model(cfg)
    if port_in_use(cfg.host, cfg.port, key="host"):
        raise RaftError(f"port {cfg.port} on {cfg.host} is already in use (another gateway, or an earlier `raft "
                        "serve` that was not stopped?); stop that process or set another port, e.g. port=9000")
    e = cfg.engine
    if e.kind != "openai" and port_in_use(e.host, e.port, key="engine.host"):
        raise RaftError(f"engine.port {e.port} on {e.host} is already in use (another engine, or an earlier "
                        "`raft serve` that was not stopped?); stop that process or set another engine.port")
    if e.kind != "openai" and (e.host, e.port) == (cfg.host, cfg.port):
        raise RaftError(f"port and engine.port are both {cfg.port} on {cfg.host}; give the engine another port")


def _stop_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so it runs the same cleanup as Ctrl-C.
    (Installed again after ray.init, which sets its own handler; uvicorn re-raises the signal to this
    handler once its graceful shutdown is done.)"""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _banner(cfg, console, t0: float, where: str) -> None:
    console.print(f"[bold green]gateway ready[/] in {time.monotonic() - t0:.1f} s ({where}): "
                  f"http://{cfg.host}:{cfg.port}/v1  models: {cfg.model_name}"
                  + (f", {cfg.base_model_name}" if cfg.engine.kind == "vllm" and cfg.base_model_name else "")
                  + f"  retrieval: {cfg.retrieval.backend}  auth: "
                  + ("on" if cfg.auth.resolved_keys() else "off") + "   (Ctrl-C or SIGTERM stops)")


def _run_uvicorn(cfg, url: str, console, t0: float, own_ray: list[bool]) -> None:
    import asyncio

    import uvicorn

    from serving.app import KEEP_ALIVE_S, create_app
    from serving.gateway import Gateway
    from serving.retriever import open_retriever

    if cfg.retrieval.backend == "ray":
        _init_ray(cfg, own_ray)
    gw = Gateway.from_config(cfg, url, open_retriever(cfg.retrieval))

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)  # binds the port; exits the process when it cannot
            if not self.should_exit:
                _banner(cfg, console, t0, "uvicorn")  # "ready" only once the port is bound

    # keep-alive longer than clients' usual idle expiry, so they close idle connections first
    server = Server(uvicorn.Config(create_app(gw), host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                   timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=cfg.shutdown_timeout_s))
    try:
        try:
            server.run()
        except SystemExit as e:  # uvicorn exits when it cannot bind (the port was taken after the check)
            from raft.errors import RaftError

            raise RaftError(f"the gateway could not listen on {cfg.host}:{cfg.port} (uvicorn exit {e.code}); "
                            "set another port") from None
    finally:
        asyncio.run(gw.close())
        if gw.retriever is not None:
            gw.retriever.close()


def _init_ray(cfg, own_ray: list[bool]) -> None:
    """Connect to the configured cluster, or start a local Ray (noted in `own_ray`: stopped at exit)."""
    import os

    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        own_ray.append(True)  # also a connection to a cluster: ray.shutdown() then only disconnects
        ray.init(address=address, include_dashboard=False) if address else ray.init(include_dashboard=False)
        _stop_on_sigterm()


def _run_ray(cfg, url: str, console, t0: float, own_ray: list[bool]) -> None:
    from ray import serve

    from serving.ray_app import run_on_ray
    from serving.retriever import open_retriever

    _init_ray(cfg, own_ray)
    retriever = None
    try:
        # Retriever actors are created once, here, and shared by every gateway replica.
        retriever = open_retriever(cfg.retrieval) if cfg.retrieval.backend == "ray" else None
        run_on_ray(cfg, url, retriever)
        _banner(cfg, console, t0, "Ray Serve")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        if retriever is not None:
            retriever.close()

