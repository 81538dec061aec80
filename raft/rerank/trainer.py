"""Fine-tune a cross-encoder reranker on a RAFT dataset with sentence-transformers' CrossEncoderTrainer and
write it where the rerank stage loads it (retrieval.rerank.Reranker), with raft_rerank.json beside it.

The model starts from the bundled all-MiniLM-L6-v2 by default: its encoder already knows the corpus's
language, and CrossEncoder adds the one-label sequence-classification head, trained here with binary
cross-entropy on (question, oracle) = 1 and (question, distractor) = 0 (raft/rerank/pairs.py). The output
directory is written under a temporary name and renamed, so a failed run never leaves half a model where
a server would load it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from raft.errors import RaftError
from raft.rerank.config import RerankTrainConfig
from raft.rerank.fusion import tune_on_split
from raft.rerank.pairs import eval_groups, make_pairs, read_manifest, read_records
from retrieval.rerank import RERANK_META


def check_out(out: Path) -> None:
    """--out must be new, empty, or a reranker this command wrote (then it is replaced): never a directory
    that holds something else."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / RERANK_META).is_file())):
        raise RaftError(f"--out {str(out)!r} exists and is not a reranker directory (no {RERANK_META}); "
                        "choose a new directory (an earlier `raft rerank train` output is replaced)")


def _load_base(cfg: RerankTrainConfig):
    from sentence_transformers import CrossEncoder
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from retrieval.embedders import resolve_embedder

    set_seed(cfg.seed)  # the new head's initial weights
    # "classifier weights newly initialized" and "converting a SentenceTransformer model to CrossEncoder"
    # are what this command is for, not warnings for its user
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    # per-tensor "Loading weights" / "Writing model shards" bars are noise here, as in the rerank stage and the
    # embedder (retrieval/); the training bar (progress=true) is tqdm's own and stays
    hf_logging.disable_progress_bar()
    st_log = logging.getLogger("sentence_transformers.base.model")
    level = st_log.level
    st_log.setLevel(logging.ERROR)
    try:
        model = CrossEncoder(resolve_embedder(cfg.base_model), num_labels=1, max_length=cfg.max_length,
                             device=cfg.device)
    except Exception as e:
        raise RaftError(f"cannot load base_model {cfg.base_model!r}: {str(e).strip().splitlines()[0][:300]}; "
                        "name a local model directory or the bundled all-MiniLM-L6-v2") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        st_log.setLevel(level)
    if cfg.layers is not None:
        keep_layers(model.model, cfg.layers, cfg.base_model)
    return model


def warmup_args(ratio: float, transformers_version: str | None = None) -> dict:
    """The warm-up as a share of the steps, in the form the installed transformers reads: from 5, a
    `warmup_steps` below 1 is that ratio and `warmup_ratio` is deprecated; before 5 `warmup_steps` is a step
    count (0.1 would mean no warm-up) and the ratio is `warmup_ratio`."""
    from importlib.metadata import version

    if int((transformers_version or version("transformers")).split(".")[0]) >= 5:
        return {"warmup_steps": ratio}
    return {"warmup_ratio": ratio}


def keep_layers(hf_model, n: int, name: str) -> None:
    """Cut a BERT-style encoder (MiniLM, BERT, RoBERTa, XLM-R, ELECTRA) to its first `n` layers, in place and
    in its config, so the saved model loads with `n` layers."""
    encoder = getattr(getattr(hf_model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise RaftError(f"layers={n}: base_model {name!r} ({type(hf_model).__name__}) has no encoder.layer list "
                        "to cut; use a BERT-style encoder such as the bundled all-MiniLM-L6-v2, or layers=null")
    if n > len(layers):
        raise RaftError(f"layers={n}, but base_model {name!r} has {len(layers)}; give at most {len(layers)}, or "
                        "null to keep them all")
    encoder.layer = layers[:n]
    hf_model.config.num_hidden_layers = n


def _quiet_metrics(trainer, progress: bool) -> None:
    """The trainer prints its final metrics as a raw dict (under the progress bar, or alone without one); the
    summary line says the same better. Keep the step bar, drop the dict."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if progress:
        class BarOnly(ProgressCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                pass

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(BarOnly)


def mrr(model, groups: list[tuple[str, list[str], list[bool]]], batch_size: int = 64) -> float | None:
    """Mean reciprocal rank of the first oracle when the model orders each group's shown passages."""
    import numpy as np

    if not groups:
        return None
    pairs = [(q, p) for q, passages, _ in groups for p in passages]
    scores = np.asarray(model.predict(pairs, batch_size=batch_size, show_progress_bar=False)).reshape(-1)
    total, at = 0.0, 0
    for _, passages, flags in groups:
        s = scores[at:at + len(passages)]
        at += len(passages)
        order = np.argsort(-s, kind="stable")
        total += 1.0 / (1 + next(r for r, i in enumerate(order) if flags[i]))
    return total / len(groups)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished model to `out`, replacing an earlier reranker there with one rename each."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def train_reranker(dataset: str | Path, out: str | Path, cfg: RerankTrainConfig, console=None) -> dict[str, Any]:
    """Train on `dataset` (a `raft build` output directory), write the model to `out`; returns the summary."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    t0 = time.perf_counter()
    dataset, out = Path(dataset), Path(out)
    check_out(out)
    read_manifest(dataset)  # a wrong DATASET_DIR is said before the model loads
    model = _load_base(cfg)  # a bad base_model or layers value is said before the pairs are read
    pairs, manifest = make_pairs(dataset, cfg.splits, cfg.negatives, cfg.seed, cfg.index_dir)
    groups = []
    if cfg.eval_split and cfg.eval_split in manifest.get("splits", []):  # never a trained split (config check)
        groups = eval_groups(dataset, cfg.eval_split, manifest)
    elif cfg.eval_split and cfg.eval_split != "validation":
        read_records(dataset, cfg.eval_split, manifest)  # a split named on purpose that is missing: say so
    st = pairs.stats
    if console is not None:
        base = cfg.base_model + (f" (its first {cfg.layers} layers)" if cfg.layers else "")
        console.print(f"training a reranker from {base} on {st['records']} question(s) of "
                      f"{dataset} ({', '.join(cfg.splits)}): {st['positives']} positive and {st['negatives']} "
                      f"negative pairs")
    pos_weight = cfg.pos_weight or st["negatives"] / st["positives"]
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight))
    data = Dataset.from_dict({"query": pairs.queries, "passage": pairs.passages, "label": pairs.labels})
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        args = CrossEncoderTrainingArguments(
            output_dir=str(scratch / "trainer"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
            per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, **warmup_args(cfg.warmup_ratio),
            seed=cfg.seed, data_seed=cfg.seed, save_strategy="no", report_to="none", logging_strategy="no",
            disable_tqdm=not cfg.progress, use_cpu=(cfg.device == "cpu"), dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available() and cfg.device != "cpu")
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss)
        _quiet_metrics(trainer, cfg.progress)
        t_train = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - t_train
        model.eval()
        eval_mrr = mrr(model, groups)
        fusion = _fusion(model, dataset, manifest, cfg, bool(groups), console)
        final = scratch / "model"
        model.save_pretrained(str(final))
        summary = {
            "out": str(out), "dataset": str(dataset.resolve()), "dataset_fingerprint": manifest.get("fingerprint"),
            "base_model": cfg.base_model, "layers": int(model.model.config.num_hidden_layers), "splits": cfg.splits,
            **st, "pos_weight": round(pos_weight, 4),
            "steps": int(result.global_step), "train_loss": round(float(result.training_loss), 5),
            "train_seconds": round(train_s, 1), "max_length": cfg.max_length,
            "eval": {"split": cfg.eval_split if groups else None, "questions": len(groups),
                     "mrr": round(eval_mrr, 4) if eval_mrr is not None else None},
            "fusion": fusion,
            "config": cfg.model_dump(mode="json"), "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        (final / RERANK_META).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _replace_dir(final, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _fusion(model, dataset: Path, manifest: dict, cfg: RerankTrainConfig, have_split: bool,
            console) -> dict[str, Any]:
    """The fusion weight saved with the model: the configured one, else one chosen on the eval split."""
    if cfg.weight is not None:
        return {"weight": cfg.weight, "reason": "configured"}
    if not have_split:
        return {"weight": 1.0, "reason": f"no {cfg.eval_split!r} split to choose it on: the cross-encoder alone"}
    if console is not None:
        console.print(f"choosing the fusion weight on the {cfg.eval_split} questions ({cfg.candidates} search hits "
                      "each)")
    got = tune_on_split(model, dataset, cfg.eval_split, manifest, cfg.index_dir, cfg.candidates)
    if got["weight"] is None:
        return {"weight": 1.0, "reason": got["reason"] + ": the cross-encoder alone"}
    return got


def _versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}
