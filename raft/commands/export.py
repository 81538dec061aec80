"""`raft export ADAPTER --merge --out DIR`: fold a trained adapter into its base for plain transformers."""

from __future__ import annotations

HELP = "merge a trained LoRA adapter into its base model (a plain transformers model dir)"
EXAMPLE = """raft export runs/raft-train/adapter --merge --out merged/   # then: transformers serve / vllm serve merged/
"""


def add_arguments(p) -> None:
    p.add_argument("adapter", metavar="ADAPTER", help="adapter directory written by `raft train`")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights (required)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the merged model")
    p.add_argument("--base", metavar="MODEL", help="base model path/name (default: the one in raft_meta.json)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="dtype of the merged weights (auto: the base model's own dtype)")
    p.add_argument("--no-dequantize", action="store_true",
                   help="for QLoRA adapters: merge into the original-precision base instead of the dequantized "
                        "4-bit base the adapter was trained against (no GPU needed)")


def run(args) -> int:
    from raft.errors import RaftError

    if not args.merge:
        raise RaftError("nothing to do: pass --merge (the adapter directory itself is already what "
                        "`vllm serve --lora-modules` loads)")
    from raft.train.export import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype,
                        dequantize=not args.no_dequantize)
    print(f"merged model written to {out}")
    return 0
