"""One training worker: model setup, resume, optimizer steps, evaluation and checkpoints.

Ray Train runs `raft.train.loop.train_func` on every worker, which builds a `TrainWorker` on the Ray runtime
(raft/train/runtime.py). `run()` calls the other methods in this order: `setup_model`, `plan_batches`,
`setup_optimizer`, `restore` (when the runtime hands back a checkpoint: after a worker died and the group
restarted, or when the driver is started again with the same storage path and run name), then `step` until
the last step, with `evaluate` and `save` every `save_every` steps. DDP and FSDP differ only in
`setup_model` (the wrap), `evaluate` (which model runs) and `adapter_state` (gathering FSDP shards).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from raft.train import checkpoint
from raft.train.checkpoint import Position
from raft.train.config import TrainConfig
from raft.train.metrics_log import MetricsLog
from raft.train.runtime import Runtime, StepHook


@dataclass
class Window:
    """Training work since the last metrics row (tokens/s excludes eval and checkpoint time)."""

    t0: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    flops: float = 0.0
    loss_sum: float = 0.0
    loss_n: int = 0


class TrainWorker:
    def __init__(self, cfg: TrainConfig, data: dict, runtime: Runtime, log_dir: str | None = None,
                 step_hooks: Sequence[StepHook] = ()):
        """`data`: {"train": [...], "eval": [...], "pad_id": int} as raft.train.trainer.prepare_data makes it;
        `log_dir`: where rank 0 writes metrics.jsonl and TensorBoard events (None: nowhere)."""
        self.cfg, self.rt = cfg, runtime
        self.train_set, self.eval_set, self.pad_id = data["train"], data["eval"], data["pad_id"]
        self.rank, self.world, self.device = runtime.rank, runtime.world, runtime.device
        self.log_dir = log_dir
        self.step_hooks = tuple(step_hooks)
        self.fsdp = cfg.ray.strategy == "fsdp" and self.world > 1
        self.pos = Position()
        self.window = Window()
        self.totals = {"tokens": 0.0, "flops": 0.0, "s": 0.0}  # this process's whole run, for the summary

    # -- the whole run ------------------------------------------------------------------------------
    def run(self) -> None:
        import torch

        cfg = self.cfg
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        with self.rt.latest_checkpoint() as ckpt:
            resumed = ckpt is not None
            self.setup_model(ckpt)
            self.plan_batches()
            self.setup_optimizer()
            if resumed:
                self.restore(ckpt)
        log = MetricsLog(self.log_dir if self.rank == 0 else None)
        log.write(self.pos.step, {"event": "start", "attention": self.attention, "batching": cfg.optim.batching,
                                  "row_len": self.row_len, "workers": self.world, "total_steps": self.total})
        if resumed:
            log.write(self.pos.step, {"event": "resumed", "resumed_step": self.pos.step, "epoch": self.pos.epoch,
                                      "micro": self.pos.micro})
        self.model.train()
        self.window = Window()
        pos, accum = self.pos, cfg.optim.grad_accum
        batches = self.epoch_batches(pos.epoch)
        while pos.step < self.total:
            if pos.micro + accum > len(batches):
                pos.epoch, pos.micro = pos.epoch + 1, 0
                batches = self.epoch_batches(pos.epoch)
            grad_norm = self.step(batches)
            if pos.step % cfg.log_every == 0 or pos.step == self.total:
                self.log_window(log, grad_norm, len(batches))
            if pos.step % cfg.save_every == 0 or pos.step == self.total:
                started = time.perf_counter()
                self.evaluate_and_save(log)
                self.window.t0 += time.perf_counter() - started  # tokens/s measures training only
            for hook in self.step_hooks:
                hook(step=pos.step, rank=self.rank, world=self.world)
        log.close()

    # -- setup -----------------------------------------------------------------------------------------
    def setup_model(self, ckpt: Path | None) -> None:
        """Base model + LoRA on this worker's device, the checkpoint's adapter weights (before wrapping:
        FSDP shards them, DDP broadcasts rank 0's), then the DDP/FSDP wrap."""
        from raft.train.attention import register as register_packed_attention
        from raft.train.batching import packed_kernel
        from raft.train.flops import FlopCounter
        from raft.train.loss import TrainedPositionsLoss
        from raft.train.model import attach_lora, load_base

        cfg = self.cfg
        # packed rows without flash-attention: per-example causal SDPA rather than a dense block-diagonal mask
        self.packed = packed_kernel(cfg.optim.batching, cfg.model.attn_implementation)
        base = load_base(cfg.model, cfg.lora, cfg.ray.use_gpu, device=self.device,
                         attn_implementation=register_packed_attention() if self.packed else None)
        if self.packed and not type(base).is_backend_compatible():  # its attention code ignores registered kernels
            self.packed = False  # so it gets the dense block-diagonal mask instead
            base = load_base(cfg.model, cfg.lora, cfg.ray.use_gpu, device=self.device)
        self.base_config = base.config
        peft_model = attach_lora(base, cfg.model, cfg.lora, cfg.seed)
        if cfg.lora.quantize != "4bit":
            peft_model.to(self.device)
        if ckpt is not None:
            checkpoint.load_adapter_weights(peft_model, ckpt, self.device)
        self.peft_model = peft_model
        self.model = self.rt.prepare_model(
            peft_model, strategy=cfg.ray.strategy if self.world > 1 else None,
            move_to_device=cfg.lora.quantize != "4bit",
            strategy_kwargs={"use_orig_params": True} if cfg.ray.strategy == "fsdp" else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.lossfn = TrainedPositionsLoss(peft_model, cfg.optim.trained_logits_only)
        self.counter = FlopCounter(peft_model, cfg.optim.trained_logits_only)
        # a packed row's additive 4-D mask must match the compute dtype (sdpa refuses a float32 mask in bf16)
        self.mask_dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        # DDP: evaluate the unwrapped model (its forward would broadcast buffers, a collective that deadlocks
        # when workers hold different numbers of eval batches). FSDP must run the wrapped model on every
        # worker, so every worker runs the same number of batches (see evaluate).
        self.eval_model = self.model if self.fsdp else peft_model

    @property
    def attention(self) -> str:
        """The attention kernel the model runs (for the metrics log)."""
        return self.base_config._attn_implementation

    def plan_batches(self) -> None:
        """Micro-batch layout and the number of optimizer steps; a ValueError if a worker gets too few."""
        from raft.train.batching import make_batches, varlen_attention

        cfg, accum = self.cfg, self.cfg.optim.grad_accum
        self.lengths = [len(e["input_ids"]) for e in self.train_set]
        # kernels that find example boundaries themselves take one long row and no mask (raft/train/batching.py)
        self.varlen = varlen_attention(self.packed, cfg.model.attn_implementation)
        self.row_len = cfg.optim.batch_tokens if self.varlen else cfg.data.max_seq_len
        micro_per_epoch = len(self.epoch_batches(0))
        if micro_per_epoch < accum:
            raise ValueError(f"{micro_per_epoch} micro-batches per worker per epoch < grad_accum={accum}; lower "
                             "grad_accum, optim.batch_tokens or ray.num_workers, or add data")
        self.total = cfg.optim.max_steps or max(1, math.ceil(cfg.optim.epochs * (micro_per_epoch // accum)))
        self.eval_batches = make_batches([len(e["input_ids"]) for e in self.eval_set], cfg.optim.batch_tokens,
                                         cfg.optim.batching, 0, cfg.data.max_seq_len,
                                         row_len=self.row_len) if self.eval_set else []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This worker's micro-batches of `epoch` (example indices), the same on every restart."""
        from raft.train.batching import make_batches, shard

        cfg = self.cfg
        b = make_batches(self.lengths, cfg.optim.batch_tokens, cfg.optim.batching, cfg.seed * 1000 + epoch,
                         cfg.data.max_seq_len, row_len=self.row_len)
        return shard(b, self.rank, self.world)

    def setup_optimizer(self) -> None:
        import torch
        from transformers import get_scheduler

        from raft.train.flops import peak_tflops
        from raft.train.model import resolve_dtype

        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        name = "constant_with_warmup" if cfg.optim.scheduler == "constant" else cfg.optim.scheduler
        self.scheduler = get_scheduler(name, self.optimizer, num_training_steps=self.total,
                                       num_warmup_steps=int(cfg.optim.warmup_ratio * self.total))
        on_gpu = self.device.type == "cuda"
        gpu_dtype = resolve_dtype(cfg.model.dtype, True)
        self.peak = cfg.peak_tflops or (peak_tflops(torch.cuda.get_device_name(self.device), gpu_dtype)
                                        if on_gpu else None)

    def restore(self, ckpt: Path) -> None:
        """Optimizer, scheduler, data position and RNG from the checkpoint (its adapter is in already)."""
        self.pos = checkpoint.restore(ckpt, self.rank, self.optimizer, self.scheduler)
        if self.rank == 0:
            print(f"[raft train] resumed from checkpoint at step {self.pos.step} (epoch {self.pos.epoch}, "
                  f"micro-batch {self.pos.micro})")

    # -- training --------------------------------------------------------------------------------------
    def to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, self.mask_dtype) if k == "attention_mask" and v.dim() == 4
                    else v.to(self.device)) for k, v in batch.items()}

    def step(self, batches: list[list[int]]):
        """One optimizer step over the next grad_accum micro-batches of `batches`; returns the gradient norm
        (a tensor: reading it waits for the device, so only logged steps do)."""
        import torch

        from raft.train.batching import collate, real_tokens

        cfg, pos, w, accum = self.cfg, self.pos, self.window, self.cfg.optim.grad_accum
        mode = cfg.optim.batching
        group = [collate(self.train_set, batches[pos.micro + k], mode, self.pad_id, self.row_len,
                         not self.varlen) for k in range(accum)]
        labelled = [int((g["labels"][:, 1:] != -100).sum()) for g in group]
        n_items = sum(labelled)
        for k, g in enumerate(group):
            g = self.to_device(g)
            # DDP syncs gradients on the last micro-batch only
            sync = k == accum - 1 or self.world == 1 or cfg.ray.strategy != "ddp"
            with (nullcontext() if sync else self.model.no_sync()):
                loss = self.lossfn.loss(self.model, g, n_items)
                loss.backward()
            w.loss_sum += float(loss.detach()) * n_items
            w.tokens += real_tokens(self.train_set, batches[pos.micro + k])
            w.flops += self.counter.batch([self.lengths[i] for i in batches[pos.micro + k]], labelled[k])
        w.loss_n += n_items
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos.micro += accum
        pos.step += 1
        return norm

    def rates(self, tokens: float, flops: float, secs: float) -> dict:
        r = {"tokens_per_s": tokens / max(secs, 1e-9), "tflops_per_s": flops / max(secs, 1e-9) / 1e12}
        if self.peak:
            r["mfu"] = r["tflops_per_s"] / (self.peak * self.world)
        return r

    def log_window(self, log: MetricsLog, grad_norm, epoch_len: int) -> None:
        """One metrics row for the steps since the last one, summed over workers."""
        import torch
        import torch.distributed as dist

        w, pos = self.window, self.pos
        dt = time.perf_counter() - w.t0
        tk = torch.tensor([w.tokens, w.loss_sum, w.loss_n, w.flops], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tk)
        m = {"train_loss": float(tk[1]) / max(1.0, float(tk[2])), **self.rates(float(tk[0]), float(tk[3]), dt),
             "window_tokens": int(tk[0]), "window_s": dt, "lr": self.scheduler.get_last_lr()[0],
             "grad_norm": float(grad_norm), "epoch": pos.epoch + pos.micro / max(1, epoch_len)}
        for key, v in (("tokens", tk[0]), ("flops", tk[3]), ("s", dt)):
            self.totals[key] += float(v)
        log.write(pos.step, m)
        if self.rank == 0:
            mfu = f" MFU {m['mfu']:.1%}" if "mfu" in m else ""
            print(f"[raft train] step {pos.step}/{self.total} loss {m['train_loss']:.4f} "
                  f"tok/s {m['tokens_per_s']:.0f}{mfu} lr {m['lr']:.2e}", flush=True)
        self.window = Window()

    # -- evaluation and checkpoints ---------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean loss per answer token over the eval set, split across workers; None without eval data."""
        import torch
        import torch.distributed as dist

        from raft.train.batching import collate

        if not self.eval_set:
            return None
        per_rank = -(-len(self.eval_batches) // self.world)
        self.eval_model.eval()
        tot = torch.zeros(2, dtype=torch.float64, device=self.device)
        mine = [(b, 1.0) for b in self.eval_batches[self.rank::self.world]]
        mine += [(self.eval_batches[0], 0.0)] * (per_rank - len(mine))  # FSDP: equal counts; repeats weigh 0
        with torch.no_grad():
            for b, weight in mine:
                batch = self.to_device(collate(self.eval_set, b, self.cfg.optim.batching, self.pad_id,
                                               self.row_len, not self.varlen))
                n = int((batch["labels"][:, 1:] != -100).sum())
                loss = self.lossfn.loss(self.eval_model, batch, n)
                tot += torch.tensor([float(loss) * n * weight, n * weight], dtype=torch.float64,
                                    device=self.device)
        if self.world > 1:
            dist.all_reduce(tot)
        self.eval_model.train()
        return float(tot[0] / max(1.0, float(tot[1])))

    def evaluate_and_save(self, log: MetricsLog) -> None:
        pos = self.pos
        eval_loss = self.evaluate()
        metrics = {"step": pos.step, "epoch": pos.epoch, "micro": pos.micro}
        if self.totals["s"]:
            metrics.update(self.rates(self.totals["tokens"], self.totals["flops"], self.totals["s"]))
        if eval_loss is not None:
            metrics["eval_loss"] = eval_loss
            log.write(pos.step, {"eval_loss": eval_loss})
            if self.rank == 0:
                print(f"[raft train] step {pos.step} eval_loss {eval_loss:.4f}", flush=True)
        self.save(metrics)
        log.sync()

    def adapter_state(self) -> dict | None:
        """LoRA weights on rank 0 (FSDP: gathered from the shards; every worker must call this)."""
        from peft import get_peft_model_state_dict

        if self.fsdp:
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                full = self.model.state_dict()
            if self.rank != 0:
                return None
            full = {k.removeprefix("_fsdp_wrapped_module."): v for k, v in full.items()}
            return get_peft_model_state_dict(self.peft_model, state_dict=full)
        return get_peft_model_state_dict(self.peft_model) if self.rank == 0 else None

    def save(self, metrics: dict) -> None:
        """Write this worker's part of a checkpoint and report it (with `metrics`) to the runtime."""
        state = self.adapter_state()
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.write(Path(tmp), self.rank, peft_model=self.peft_model, adapter_state=state,
                             optimizer=self.optimizer, scheduler=self.scheduler, pos=self.pos, metrics=metrics,
                             sharded_optimizer=self.fsdp)
            self.rt.report(metrics, Path(tmp), f"checkpoint_step{self.pos.step:07d}")
