"""The driver of `raft train`: validate everything cheap first, tokenize once, run Ray Train, write the adapter.

Order matters for the user: config, model path, target modules, data, storage and GPUs are all checked
before any worker starts, and each failure is a RaftError that says what is wrong and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from raft.errors import RaftError
from raft.train import storage as store
from raft.train.config import TrainConfig
from raft.train.runtime import StepHook


def run_dir(cfg: TrainConfig) -> str:
    return store.join(cfg.ray.storage_path, cfg.ray.run_name)


def check_storage(cfg: TrainConfig) -> None:
    """The storage path must be creatable and writable: a local directory, or an object store (probed)."""
    if store.is_uri(cfg.ray.storage_path):
        store.check_writable(cfg.ray.storage_path)
        return
    p = Path(cfg.ray.storage_path).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RaftError(f"storage path {str(p)!r} is not writable ({e.strerror or e}); set train.ray.storage_path "
                        "to a directory you can write (a shared filesystem or s3://... on a cluster)") from None


def prepare_data(cfg: TrainConfig, tokenizer, console) -> tuple[dict, dict]:
    """Load + tokenize train/eval; returns (data for workers, stats for the summary)."""
    from raft.train.data import load_examples
    from raft.train.tokenize import Renderer

    train_ex, where = load_examples(cfg.data.path, cfg.data.train_split, cfg.data.max_examples)
    eval_ex, eval_where = [], None
    if cfg.data.eval_split or cfg.data.eval_path:
        eval_ex, eval_where = load_examples(cfg.data.eval_path or cfg.data.path, cfg.data.eval_split or "validation",
                                            required=False)
        if not eval_ex:
            console.print(f"[yellow]warning:[/] no eval records ({eval_where}); eval loss is disabled and the "
                          "last checkpoint is exported")
    renderer = Renderer(tokenizer, cfg.data.max_seq_len, cfg.data.label_mode, cfg.data.no_chat_template,
                        cfg.model.name_or_path)
    train, tstats = renderer.encode_all(train_ex)
    evals, estats = renderer.encode_all(eval_ex)
    if not train:
        raise RaftError(f"all {len(train_ex)} training examples from {where} are longer than "
                        f"data.max_seq_len={cfg.data.max_seq_len} even with documents trimmed (their answers "
                        "would be cut off); raise train.data.max_seq_len")
    stats = {"train_source": where, "eval_source": eval_where, "label_mode": renderer.label_mode,
             "chat_template": renderer.use_chat, "train": tstats.summary(), "eval": estats.summary()}
    check_batches(cfg, [len(e["input_ids"]) for e in train])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"train": train, "eval": evals, "pad_id": pad}, stats


def check_batches(cfg: TrainConfig, lengths: list[int]) -> None:
    """Every worker needs at least one optimizer step's worth of micro-batches per epoch."""
    from raft.train.batching import make_batches, packed_kernel, varlen_attention

    attn = cfg.model.attn_implementation
    varlen = varlen_attention(packed_kernel(cfg.optim.batching, attn), attn)
    row_len = cfg.optim.batch_tokens if varlen else cfg.data.max_seq_len
    n = len(make_batches(lengths, cfg.optim.batch_tokens, cfg.optim.batching, cfg.seed * 1000,
                         cfg.data.max_seq_len, row_len=row_len))
    need = cfg.ray.num_workers * cfg.optim.grad_accum
    if n < need:
        raise RaftError(f"{len(lengths)} training examples make {n} micro-batches of optim.batch_tokens="
                        f"{cfg.optim.batch_tokens}, fewer than ray.num_workers x optim.grad_accum = {need}; "
                        "lower optim.batch_tokens, grad_accum or num_workers, or add data")


STATS_COLUMNS = [("examples", "examples"), ("trimmed_docs", "trimmed"), ("dropped", "dropped"),
                 ("len_min", "min"), ("len_mean", "mean"), ("len_p50", "p50"), ("len_p95", "p95"),
                 ("len_max", "max"), ("answer_len_mean", "answer"), ("tokens", "all tokens")]


def print_stats(stats: dict, console) -> None:
    from rich import box
    from rich.table import Table

    # short headers and no vertical rules: the table fits 80 columns, so nothing is cut to "spl…"
    t = Table(title="training data: tokens per example (answer: mean answer length)", box=box.SIMPLE_HEAD,
              show_header=True, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    t.add_column("split")
    for _, head in STATS_COLUMNS:
        t.add_column(head, justify="right", min_width=len(head))
    for split in ("train", "eval"):
        s = stats[split]
        if split == "eval" and not s["examples"]:
            continue
        t.add_row(split, *[f"{s[c]:.0f}" if isinstance(s[c], float) else str(s[c]) for c, _ in STATS_COLUMNS])
    console.print(t)
    console.print(f"labels: {stats['label_mode']} (loss on answer tokens only); "
                  f"template: {'chat' if stats['chat_template'] else 'completion_prompt'}")
    for split in ("train", "eval"):
        if stats[split]["dropped"]:
            console.print(f"[yellow]dropped {stats[split]['dropped']} {split} example(s) whose answer would be "
                          f"truncated[/] (ids: {stats[split]['dropped_ids']}); raise data.max_seq_len to keep them")


def init_ray(cfg: TrainConfig) -> None:
    """Start or join Ray. Worker and Ray-internal output goes to Ray's log files (see ray_log_dir), and
    Ray's start-up messages to its logger at ERROR: the terminal shows raft's progress and summary."""
    import logging

    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        try:
            ray.init(address=address, runtime_env=env, **quiet)
        except ConnectionError as e:
            why = str(e).splitlines()[0][:200]
            raise RaftError(f"could not join the Ray cluster at {address!r} ({why}); check RAY_ADDRESS / "
                            "train.ray.address and that the head node is up, and for a cluster with token "
                            "authentication (Ray's default) export its RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from None
    else:
        ray.init(runtime_env=env, include_dashboard=False, **quiet)


def ray_log_dir() -> str | None:
    """Where this Ray session writes worker and actor logs (on the head node)."""
    try:
        from ray._private import worker

        return str(worker._global_node.get_logs_dir_path())
    except Exception:  # a private API (Ray has no public one): the summary leaves the path out if it moves
        return None


def check_gpus(cfg: TrainConfig) -> None:
    import ray

    if not cfg.ray.use_gpu:
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have < cfg.ray.num_workers:
        raise RaftError(f"train.ray.use_gpu=true needs {cfg.ray.num_workers} GPU(s) but the Ray cluster has "
                        f"{int(have)}; set train.ray.use_gpu=false (and lora.quantize=none) for CPU training, "
                        "or point RAY_ADDRESS at a cluster with GPUs")


def fit(cfg: TrainConfig, data: dict, log_dir: str | None, step_hooks: Sequence[StepHook] = ()):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raft.train.loop import train_func

    has_eval = bool(data["eval"])
    storage = cfg.ray.storage_path if store.is_uri(cfg.ray.storage_path) else str(
        Path(cfg.ray.storage_path).expanduser().resolve())
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    loop_cfg = {"cfg": cfg.model_dump(mode="json"), "data": ray.put(data), "log_dir": log_dir,
                "step_hooks": list(step_hooks)}
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.ray.run_name, storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_best,
                checkpoint_score_attribute="eval_loss" if has_eval else "step",
                checkpoint_score_order="min" if has_eval else "max"),
        ),
    )
    return trainer.fit()


def with_model_path(cfg: TrainConfig, path: str) -> TrainConfig:
    """`cfg` with the base model replaced by its loadable form (absolute directory, converted GGUF)."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": path})})


def write_adapter(cfg: TrainConfig, result, tokenizer, stats: dict, out: Path, source: str | None = None) -> dict:
    """Copy the chosen checkpoint's adapter to `out`, add tokenizer files and raft_meta.json. `source` is the
    model reference as the user gave it (a packaged name or GGUF file), kept so that export can find it again."""
    from raft.prompt import PROMPT_VERSION
    from raft.train.checkpoint import ADAPTER_SUBDIR
    from raft.train.data import dataset_fingerprint

    chosen, metrics = result.checkpoint, dict(result.metrics or {})
    if cfg.export == "best" and result.best_checkpoints:
        scored = [(c, m) for c, m in result.best_checkpoints if "eval_loss" in m]
        if scored:
            chosen, metrics = min(scored, key=lambda cm: cm[1]["eval_loss"])
    if chosen is None:
        raise RaftError("training finished without a checkpoint; nothing to export")
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:6]}")
    with chosen.as_directory() as d:
        shutil.copytree(Path(d) / ADAPTER_SUBDIR, tmp)
    tokenizer.save_pretrained(tmp)
    cfg_path = tmp / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["base_model_name_or_path"] = cfg.model.name_or_path
    cfg_path.write_text(json.dumps(acfg, indent=2))
    train_config = cfg.model_dump(mode="json")
    train_config["ray"]["storage_path"] = store.redact(cfg.ray.storage_path)  # the adapter gets shared
    meta = {"base_model": cfg.model.name_or_path, "base_model_source": source or cfg.model.name_or_path,
            "prompt_version": PROMPT_VERSION,
            "dataset_fingerprint": dataset_fingerprint(cfg.data.path), "train_config": train_config,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "checkpoint": chosen.path, "data_stats": stats, "quantized": cfg.lora.quantize,
            "label_mode": stats.get("label_mode"), "chat_template": stats.get("chat_template")}
    (tmp / "raft_meta.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the adapter appears complete or not at all
    return meta


def run_training(cfg: TrainConfig, console=None, *, step_hooks: Sequence[StepHook] = ()) -> dict:
    """Everything `raft train` does; returns the summary (also printed).

    `step_hooks` run on every worker after each optimizer step (see raft.train.runtime.StepHook)."""
    from rich.console import Console

    from raft.model_source import resolve_model
    from raft.train.data import check_data_source
    from raft.train.model import check_model_source, load_tokenizer, meta_model, resolve_targets

    console = console or Console()
    started = time.time()
    if cfg.output_dir and store.is_uri(cfg.output_dir):
        raise RaftError(f"train.output_dir={cfg.output_dir!r} must be a local path (checkpoints may live in an "
                        "object store via train.ray.storage_path)")
    check_data_source(cfg.data.path)  # said at once, not after the model lookup (which may wait on the hub)
    if cfg.data.eval_path:
        check_data_source(cfg.data.eval_path)
    source = cfg.model.name_or_path
    cfg = with_model_path(cfg, resolve_model(source, log=lambda m: console.print(m, highlight=False)))
    check_model_source(cfg.model)
    check_storage(cfg)
    resolve_targets(meta_model(cfg.model), cfg.lora)
    tokenizer = load_tokenizer(cfg.model)
    data, stats = prepare_data(cfg, tokenizer, console)
    print_stats(stats, console)
    init_ray(cfg)
    check_gpus(cfg)
    rdir = run_dir(cfg)
    log_dir = store.join(rdir, "logs") if store.is_uri(rdir) else str(Path(rdir).expanduser().resolve() / "logs")
    console.print(f"training {source} on {cfg.ray.num_workers} worker(s) "
                  f"({'GPU' if cfg.ray.use_gpu else 'CPU'}, {cfg.ray.strategy}); run {store.redact(rdir)}")
    from ray.train import TrainingFailedError

    from raft.train.progress import TrainProgress

    ray_logs = ray_log_dir()
    metrics_file = None if store.is_uri(log_dir) else Path(log_dir) / "metrics.jsonl"
    try:
        with TrainProgress(console, metrics_file):
            result = fit(cfg, data, log_dir, step_hooks)
    except TrainingFailedError as e:
        raise RaftError(f"training failed: {type(e).__name__}: {str(e)[:800]}\nworker logs: {ray_logs}\n"
                        "rerun the same command (same train.ray.storage_path and run_name) to resume from the "
                        f"latest checkpoint in {store.redact(rdir)}") from e
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else Path(rdir).expanduser() / "adapter"
    meta = write_adapter(cfg, result, tokenizer, stats, out.resolve(), source)
    summary = {"adapter": str(out.resolve()), "run_dir": store.redact(rdir), "ray_logs": ray_logs,
               "log_dir": store.redact(log_dir),
               "steps": (result.metrics or {}).get("step"), "final_metrics": dict(result.metrics or {}),
               "exported_metrics": meta["metrics"], "examples": stats["train"]["examples"],
               "dropped": stats["train"]["dropped"], "seconds": round(time.time() - started, 1)}
    fm = summary["final_metrics"]  # tokens/s and TFLOP/s over training steps (eval and checkpoints excluded)
    speed = (f" at {fm['tokens_per_s']:.0f} tokens/s ({fm['tflops_per_s']:.3g} model TFLOP/s"
             + (f", MFU {fm['mfu']:.1%}" if "mfu" in fm else "") + ")") if "tokens_per_s" in fm else ""
    console.print(f"[bold green]done[/] in {summary['seconds']}s: {summary['steps']} steps{speed}, "
                  f"exported {cfg.export} checkpoint (eval_loss {meta['metrics'].get('eval_loss', 'n/a')})\n"
                  f"adapter: {summary['adapter']}\n"
                  f"metrics: {store.join(summary['log_dir'], 'metrics.jsonl')} (+ tensorboard/)"
                  + (f"\nRay and worker logs: {ray_logs}" if ray_logs else ""), highlight=False)
    return summary
