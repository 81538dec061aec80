"""The per-worker training function that Ray Train runs on every worker.

Resumption: each checkpoint holds the adapter, optimizer, scheduler, the data position (epoch + micro-batch
index within the epoch, + optimizer step) and every worker's RNG state. Ray Train hands the latest checkpoint
back through `ray.train.get_checkpoint()` both after a worker dies (FailureConfig restarts the group) and
when the driver is started again with the same storage path and run name, and we continue from exactly that
micro-batch: batches are a pure function of (seed, epoch), so skipping the consumed ones is deterministic.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

STATE_FILE = "train_state.pt"
ADAPTER_SUBDIR = "adapter"
PROBE_FILE = "probe.pt"


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    import numpy as np
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


class MetricsLog:
    """Rank-0 metrics: one JSON object per line + TensorBoard scalars (appended across restarts).

    For an object-store run (`log_dir` is a URI) the files are written to a local mirror, seeded with the
    store's metrics.jsonl on resume, and uploaded by `sync()` at every checkpoint and at the end: steps after
    the last checkpoint of a worker that dies are trained, and logged, again after the restart."""

    def __init__(self, log_dir: str | None):
        from raft.train import storage

        self.jsonl = self.tb = None
        self.remote = log_dir if log_dir and storage.is_uri(log_dir) else None
        if not log_dir:
            return
        local = Path(tempfile.mkdtemp(prefix="raft-logs-")) if self.remote else Path(log_dir)
        local.mkdir(parents=True, exist_ok=True)
        if self.remote:
            storage.download_if_exists(self.remote, "metrics.jsonl", local / "metrics.jsonl")
        self.local = local
        self.jsonl = open(local / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(local / "tensorboard"))
        except Exception:  # tensorboard missing: JSONL still works
            self.tb = None

    def write(self, step: int, metrics: dict) -> None:
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def sync(self) -> None:
        if self.remote:
            from raft.train import storage

            storage.upload_dir(self.local, self.remote)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def train_func(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_scheduler

    from raft.train.attention import register as register_packed_attention
    from raft.train.batching import collate, make_batches, packed_kernel, real_tokens, shard, varlen_attention
    from raft.train.config import TrainConfig
    from raft.train.flops import FlopCounter, peak_tflops
    from raft.train.loss import TrainedPositionsLoss
    from raft.train.model import attach_lora, load_base, resolve_dtype

    cfg = TrainConfig.model_validate(config["cfg"])
    data = config["data"]
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    train, evals, pad_id = data["train"], data["eval"], data["pad_id"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    # packed rows without flash-attention: per-example causal SDPA rather than a dense block-diagonal mask
    packed = packed_kernel(cfg.optim.batching, cfg.model.attn_implementation)
    base = load_base(cfg.model, cfg.lora, cfg.ray.use_gpu, device=device,
                     attn_implementation=register_packed_attention() if packed else None)
    if packed and not type(base).is_backend_compatible():  # its attention code ignores registered kernels
        packed = False  # so it gets the dense block-diagonal mask instead
        base = load_base(cfg.model, cfg.lora, cfg.ray.use_gpu, device=device)
    peft_model = attach_lora(base, cfg.model, cfg.lora, cfg.seed)
    if cfg.lora.quantize != "4bit":
        peft_model.to(device)
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # adapter weights go in before wrapping (FSDP shards them; DDP broadcasts rank 0's)
        from safetensors.torch import load_file

        with ckpt.as_directory() as d:
            set_peft_model_state_dict(peft_model, load_file(str(Path(d) / ADAPTER_SUBDIR /
                                                                 "adapter_model.safetensors"), device=str(device)))
    kwargs = {"use_orig_params": True} if cfg.ray.strategy == "fsdp" else None
    model = ray.train.torch.prepare_model(peft_model, move_to_device=cfg.lora.quantize != "4bit",
                                          parallel_strategy=cfg.ray.strategy if world > 1 else None,
                                          parallel_strategy_kwargs=kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    lossfn = TrainedPositionsLoss(peft_model, cfg.optim.trained_logits_only)
    counter = FlopCounter(peft_model, cfg.optim.trained_logits_only)
    gpu_dtype = resolve_dtype(cfg.model.dtype, True)
    on_gpu = device.type == "cuda"
    peak = cfg.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device), gpu_dtype) if on_gpu else None)
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    lengths = [len(e["input_ids"]) for e in train]
    mode, accum = cfg.optim.batching, cfg.optim.grad_accum
    # kernels that find example boundaries themselves take one long row and no mask (raft/train/batching.py)
    varlen = varlen_attention(packed, cfg.model.attn_implementation)
    row_len = cfg.optim.batch_tokens if varlen else cfg.data.max_seq_len
    mask_dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype

    def to_device(batch: dict) -> dict:
        # a packed row's additive 4-D mask must match the compute dtype (sdpa refuses a float32 mask in bf16)
        return {k: (v.to(device, mask_dtype) if k == "attention_mask" and v.dim() == 4 else v.to(device))
                for k, v in batch.items()}

    def epoch_batches(epoch: int) -> list[list[int]]:
        b = make_batches(lengths, cfg.optim.batch_tokens, mode, cfg.seed * 1000 + epoch, cfg.data.max_seq_len,
                         row_len=row_len)
        return shard(b, rank, world)

    micro_per_epoch = len(epoch_batches(0))
    if micro_per_epoch < accum:
        raise ValueError(f"{micro_per_epoch} micro-batches per worker per epoch < grad_accum={accum}; lower "
                         "grad_accum, optim.batch_tokens or ray.num_workers, or add data")
    steps_per_epoch = micro_per_epoch // accum
    total = cfg.optim.max_steps or max(1, math.ceil(cfg.optim.epochs * steps_per_epoch))
    sched_name = "constant_with_warmup" if cfg.optim.scheduler == "constant" else cfg.optim.scheduler
    sched = get_scheduler(sched_name, opt, num_warmup_steps=int(cfg.optim.warmup_ratio * total),
                          num_training_steps=total)

    step, epoch, micro = 0, 0, 0
    if ckpt:
        with ckpt.as_directory() as d:
            st = torch.load(Path(d) / STATE_FILE, weights_only=False, map_location="cpu")
            opt_file = Path(d) / f"optimizer_rank{rank}.pt"  # FSDP: this worker's shard of the state
            opt.load_state_dict(torch.load(opt_file, weights_only=False, map_location="cpu")
                                if opt_file.is_file() else st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            step, epoch, micro = st["step"], st["epoch"], st["micro"]
            rng_file = Path(d) / f"rng_rank{rank}.pt"
            if rng_file.is_file():
                _set_rng_state(torch.load(rng_file, weights_only=False))
        if rank == 0:
            print(f"[raft train] resumed from checkpoint at step {step} (epoch {epoch}, micro-batch {micro})")

    log = MetricsLog(config.get("log_dir") if rank == 0 else None)
    log.write(step, {"event": "start", "attention": base.config._attn_implementation, "batching": mode,
                     "row_len": row_len, "workers": world, "total_steps": total})
    if ckpt:
        log.write(step, {"event": "resumed", "resumed_step": step, "epoch": epoch, "micro": micro})
    fail_dir = config.get("fail_marker_dir")
    fail_rank = 1 if world > 1 else 0

    # DDP: evaluate the unwrapped model (its forward would broadcast buffers, a collective that deadlocks when
    # workers hold different numbers of eval batches). FSDP must run the wrapped model on every worker, so
    # every worker runs the same number of batches (repeats weigh 0).
    fsdp = cfg.ray.strategy == "fsdp" and world > 1
    eval_model = model if fsdp else peft_model
    eval_batches = make_batches([len(e["input_ids"]) for e in evals], cfg.optim.batch_tokens, mode, 0,
                                cfg.data.max_seq_len, row_len=row_len) if evals else []
    per_rank = -(-len(eval_batches) // world)

    def evaluate() -> float | None:
        if not evals:
            return None
        eval_model.eval()
        tot = torch.zeros(2, dtype=torch.float64, device=device)
        mine = [(b, 1.0) for b in eval_batches[rank::world]]
        mine += [(eval_batches[0], 0.0)] * (per_rank - len(mine))
        with torch.no_grad():
            for b, weight in mine:
                batch = to_device(collate(evals, b, mode, pad_id, row_len, not varlen))
                n = int((batch["labels"][:, 1:] != -100).sum())
                loss = lossfn.loss(eval_model, batch, n)
                tot += torch.tensor([float(loss) * n * weight, n * weight], dtype=torch.float64,
                                    device=device)
        if world > 1:
            dist.all_reduce(tot)
        eval_model.train()
        return float(tot[0] / max(1.0, float(tot[1])))

    def adapter_state() -> dict | None:
        """LoRA weights on rank 0 (FSDP: gathered from the shards; every worker must call this)."""
        if fsdp:
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                full = model.state_dict()
            if rank != 0:
                return None
            full = {k.removeprefix("_fsdp_wrapped_module."): v for k, v in full.items()}
            return get_peft_model_state_dict(peft_model, state_dict=full)
        return get_peft_model_state_dict(peft_model) if rank == 0 else None

    def save(metrics: dict) -> None:
        state = adapter_state()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(_rng_state(), Path(tmp) / f"rng_rank{rank}.pt")
            if fsdp:
                torch.save(opt.state_dict(), Path(tmp) / f"optimizer_rank{rank}.pt")
            if rank == 0:
                peft_model.save_pretrained(Path(tmp) / ADAPTER_SUBDIR, state_dict=state)
                torch.save({"optimizer": None if fsdp else opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                            "epoch": epoch, "micro": micro, "metrics": metrics}, Path(tmp) / STATE_FILE)
                probe = (evals or train)[0]["input_ids"]
            if rank == 0 and not fsdp:  # logits of the saved adapter, to check that reloading reproduces them
                with torch.no_grad():
                    peft_model.eval()
                    logits = peft_model(input_ids=torch.tensor([probe], device=device)).logits[0, -8:]
                    peft_model.train()
                torch.save({"input_ids": probe, "logits": logits.float().cpu()}, Path(tmp) / PROBE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{step:07d}")

    model.train()
    t0, tokens, flops, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0.0, 0
    run = {"tokens": 0.0, "flops": 0.0, "s": 0.0}  # this process's whole run, for the summary

    def rates(tok: float, fl: float, secs: float) -> dict:
        r = {"tokens_per_s": tok / max(secs, 1e-9), "tflops_per_s": fl / max(secs, 1e-9) / 1e12}
        if peak:
            r["mfu"] = r["tflops_per_s"] / (peak * world)
        return r
    batches = epoch_batches(epoch)
    last_eval = None
    while step < total:
        if micro + accum > len(batches):
            epoch, micro = epoch + 1, 0
            batches = epoch_batches(epoch)
        group = [collate(train, batches[micro + k], mode, pad_id, row_len, not varlen) for k in range(accum)]
        labelled = [int((g["labels"][:, 1:] != -100).sum()) for g in group]
        n_items = sum(labelled)
        for k, g in enumerate(group):
            g = to_device(g)
            sync = k == accum - 1 or world == 1 or cfg.ray.strategy != "ddp"
            ctxm = model.no_sync() if not sync else _nullcontext()
            with ctxm:
                loss = lossfn.loss(model, g, n_items)
                loss.backward()
            loss_sum += float(loss.detach()) * n_items
            tokens += real_tokens(train, batches[micro + k])
            flops += counter.batch([lengths[i] for i in batches[micro + k]], labelled[k])
        loss_n += n_items
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        micro += accum
        step += 1
        if step % cfg.log_every == 0 or step == total:
            dt = time.perf_counter() - t0
            tk = torch.tensor([tokens, loss_sum, loss_n, flops], dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(tk)
            m = {"train_loss": float(tk[1]) / max(1.0, float(tk[2])), **rates(float(tk[0]), float(tk[3]), dt),
                 "window_tokens": int(tk[0]), "window_s": dt, "lr": sched.get_last_lr()[0], "grad_norm": float(norm),
                 "epoch": epoch + micro / max(1, len(batches))}
            for key, v in (("tokens", tk[0]), ("flops", tk[3]), ("s", dt)):
                run[key] += float(v)
            log.write(step, m)
            if rank == 0:
                mfu = f" MFU {m['mfu']:.1%}" if "mfu" in m else ""
                print(f"[raft train] step {step}/{total} loss {m['train_loss']:.4f} "
                      f"tok/s {m['tokens_per_s']:.0f}{mfu} lr {m['lr']:.2e}", flush=True)
            t0, tokens, flops, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0.0, 0
        if step % cfg.save_every == 0 or step == total:
            ts = time.perf_counter()
            last_eval = evaluate()
            metrics = {"step": step, "epoch": epoch, "micro": micro}
            if run["s"]:
                metrics.update(rates(run["tokens"], run["flops"], run["s"]))
            if last_eval is not None:
                metrics["eval_loss"] = last_eval
                log.write(step, {"eval_loss": last_eval})
                if rank == 0:
                    print(f"[raft train] step {step} eval_loss {last_eval:.4f}", flush=True)
            save(metrics)
            log.sync()
            t0 += time.perf_counter() - ts  # tokens/s measures training, not eval + checkpoint time
        if fail_dir and step in cfg.fail_at_steps and rank == fail_rank:
            marker = Path(fail_dir) / f"failed_at_{step}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(os.getpid()))
                # Die during the next step, once the controller has polled the report above (every
                # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): a worker that dies right after ray.train.report can take
                # the not-yet-registered checkpoint with it, and the run then resumes from the one before.
                time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 1)
                print(f"[raft train] injected failure: worker rank {rank} exits after step {step}", flush=True)
                os._exit(1)
    log.close()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
