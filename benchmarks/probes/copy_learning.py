"""Probe behind the RAFT-effect findings: how many steps does a tiny random Llama need to learn to *read*?

Not a pipeline benchmark: a bare PyTorch loop (every weight trainable, no LoRA, no Ray) on an unlimited
stream of fresh examples of the `benchmarks/raft_effect.py` task, rendered by the project's own
`raft/train/tokenize.py` Renderer, so nothing but the model's learning speed is measured. Every
`--eval-every` steps it prints teacher-forced accuracy on 100 unseen test questions, with 0 and with 4
distractors: `v` = the value token inside the quote, `n` = the name token inside the quote.

    python benchmarks/probes/copy_learning.py --distractors 0 --p-oracle 1.0     # oracle-only: copies at ~500 steps
    python benchmarks/probes/copy_learning.py --distractors 4 --p-oracle 0.8 --steps 2500   # RAFT: does not match yet
    python benchmarks/probes/copy_learning.py --no-title --relations 16 --fmt "The {r} of {n} is {v}."
    # names without a leading space everywhere, so the quote can start with the name ("##begin_quote##kapo luv."),
    # after a generic copy pre-training on random tokens (no documents, no questions):
    python benchmarks/probes/copy_learning.py --glued --no-title --fmt "{n} {v}." \
        --qfmt "What is the code of ({n})?" --pretrain-steps 400 --steps 900
    # a short-convolution layer in front of one attention layer (LFM2), one 128-wide head:
    python benchmarks/probes/copy_learning.py --arch ca --heads 1 --no-title --fmt "Code {n} {v}." --steps 1500

Measured 2026-11-21 (2 CPU cores, ~17,500 tokens/s): see the README, "The RAFT effect", findings.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

RELATIONS = ["code", "color", "city", "pet", "tool", "song", "dish", "boat", "star", "tree", "gem", "game",
             "horse", "coin", "lake", "bird"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/copy_probe", help="where the tokenizer/base config is built once")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16, help="examples per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--distractors", type=int, default=4, help="distractors in training examples")
    p.add_argument("--min-distractors", type=int, default=None,
                   help="draw each training example's distractor count from [this, --distractors]")
    p.add_argument("--p-oracle", type=float, default=0.8, help="share of training examples showing the oracle")
    p.add_argument("--fmt", default="The code of {n} is {v}.", help="document text ({n} name, {v} value, {r} relation)")
    p.add_argument("--qfmt", default="What is the {r} of {n}?", help="question text")
    p.add_argument("--glued", action="store_true", help="names are written without a leading space")
    p.add_argument("--no-title", action="store_true", help="render documents without their 'Title: NAME' line")
    p.add_argument("--relations", type=int, default=0, help="relation types ({r}); 0 = always 'code'")
    p.add_argument("--arch", default="llama", help="llama, or an LFM2 layer pattern: c = short-conv layer, "
                   "a = attention layer (e.g. 'ca')")
    p.add_argument("--names", type=int, default=0, help="sample names from the first N only (0 = all 500)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--pretrain-steps", type=int, default=0, help="generic induction pre-training steps first")
    p.add_argument("--pretrain-len", type=int, default=12, help="random tokens repeated once per sequence")
    p.add_argument("--pretrain-gap", choices=["random", "fixed"], default="random",
                   help="fixed: the repeat follows right after (a fixed-offset head solves it)")
    a = p.parse_args()

    import raft_effect
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from raft.prompt import cot_answer
    from raft.train.data import Example
    from raft.train.tokenize import Renderer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    work = (REPO / a.work) if not Path(a.work).is_absolute() else Path(a.work)
    words = raft_effect.make_task(work / "task", 1000, 0)[3]
    names = sorted(w for w in words if len(w) == 4)
    values = sorted(w for w in words if len(w) == 3)
    rels = RELATIONS[:a.relations] if a.relations else ["code"]
    # the tokenizer is trained on the texts this format writes (every name/value one token): one base per format
    key = hashlib.sha1(repr((a.fmt, a.qfmt, a.no_title, a.relations, a.hidden, a.layers, a.heads)).encode())
    base = work / f"base-{key.hexdigest()[:10]}"
    if not (base / "config.json").exists():
        trng = random.Random(5)
        texts = []
        for n in names:
            v, r = trng.choice(values), trng.choice(rels)
            texts += [a.fmt.format(n=n, v=v, r=r), a.qfmt.format(n=n, r=r)]
        raft_effect.build_base(base, texts, vocab=3000, hidden=a.hidden, layers=a.layers, heads=a.heads, seed=0,
                               titles=["" if a.no_title else n for n in names])
    tok = AutoTokenizer.from_pretrained(base)
    renderer = Renderer(tok, 512)
    one = lambda w, sp: len(tok(sp + w, add_special_tokens=False)["input_ids"]) == 1  # noqa: E731
    print(f"single tokens: names {sum(one(n, '' if a.glued else ' ') for n in names)}/{len(names)}, "
          f"values {sum(one(v, ' ') for v in values)}/{len(values)}", flush=True)

    def sample(d: int, p_oracle: float, rng: random.Random):
        ns = rng.sample(names[:a.names] if a.names else names, d + 1)
        vs = [rng.choice(values) for _ in ns]
        rs = [rng.choice(rels) for _ in ns]
        docs = [{"title": "" if a.no_title else n, "text": a.fmt.format(n=n, v=v, r=r)} for n, v, r in zip(ns, vs, rs)]
        shown = docs[:] if rng.random() < p_oracle else docs[1:]  # docs[0] is the oracle
        rng.shuffle(shown)
        ex = Example(id="x", question=a.qfmt.format(n=ns[0], r=rs[0]), docs=shown,
                     answer=cot_answer("The context states:", [docs[0]["text"]], vs[0]))
        ids, labels, _ = renderer.encode(ex)
        return ids, labels, vs[0], ns[0]

    def collate(exs):
        width = max(len(e[0]) for e in exs)
        ids = torch.full((len(exs), width), tok.pad_token_id)
        labels = torch.full((len(exs), width), -100)
        mask = torch.zeros((len(exs), width), dtype=torch.long)
        for i, (x, y, _, _) in enumerate(exs):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return ids, labels, mask

    test_rng = random.Random(123)
    tests = {d: [sample(d, 1.0, test_rng) for _ in range(100)] for d in (0, 4)}

    cfg = AutoConfig.from_pretrained(base)
    cfg.tie_word_embeddings = True  # writing a token the model attends to starts as an identity map
    if a.arch == "llama":
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import Lfm2Config, Lfm2ForCausalLM
        kinds = {"c": "conv", "a": "full_attention"}
        model = Lfm2ForCausalLM(Lfm2Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            block_auto_adjust_ff_dim=False, num_hidden_layers=len(a.arch), num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, layer_types=[kinds[c] for c in a.arch],
            max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id,
            bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, tie_word_embeddings=True))
    print(f"model: {type(model).__name__} {a.arch}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params",
          flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    warm = max(1, a.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps))))

    @torch.no_grad()
    def accuracy(d: int) -> str:
        model.eval()
        ids, _, mask = collate(tests[d])
        logits = model(input_ids=ids, attention_mask=mask).logits
        ok_v = ok_n = 0
        for i, (_, y, v, n) in enumerate(tests[d]):
            for word, kind in ((v, "v"), (n, "n")):
                tid = tok((" " if kind == "v" or not a.glued else "") + word, add_special_tokens=False)["input_ids"][0]
                pos = next((j for j in range(1, len(y)) if y[j] == tid), None)  # its first place in the answer
                hit = pos is not None and int(logits[i, pos - 1].argmax()) == tid
                ok_v, ok_n = (ok_v + hit, ok_n) if kind == "v" else (ok_v, ok_n + hit)
        model.train()
        return f"v {ok_v / len(tests[d]):.2f} n {ok_n / len(tests[d]):.2f}"

    if a.pretrain_steps:
        # random token runs repeated once: the repeat is predictable only by finding the current token
        # earlier and copying its successor (an induction head); nothing of the task is in it
        popt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(1)
        low = 10
        t0 = time.perf_counter()
        for step in range(1, a.pretrain_steps + 1):
            # with a random gap no fixed offset solves it, only content
            L = a.pretrain_len
            ids = torch.randint(low, len(tok), (32, 4 * L), generator=g)
            labels = torch.full_like(ids, -100)
            for i in range(32):
                src = int(torch.randint(0, L, (1,), generator=g)) if a.pretrain_gap == "random" else 0
                dst = int(torch.randint(src + L + 1, 3 * L, (1,), generator=g)) if a.pretrain_gap == "random" else L
                ids[i, dst:dst + L] = ids[i, src:src + L]
                labels[i, dst + 1:dst + L] = ids[i, dst + 1:dst + L]
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            popt.step()
            popt.zero_grad()
            if step % 50 == 0:
                print(f"pretrain {step:5d} loss {loss.item():.3f} {time.perf_counter() - t0:5.0f} s", flush=True)
        print(f"after pre-training: oracle alone: {accuracy(0)} | 4 distractors: {accuracy(4)}", flush=True)

    rng = random.Random(0)
    t0, tokens = time.perf_counter(), 0
    for step in range(1, a.steps + 1):
        lo = a.distractors if a.min_distractors is None else a.min_distractors
        ids, labels, mask = collate([sample(rng.randint(lo, a.distractors), a.p_oracle, rng) for _ in range(a.batch)])
        tokens += int(mask.sum())
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % a.eval_every == 0 or step == a.steps:
            dt = time.perf_counter() - t0
            print(f"step {step:5d} loss {loss.item():.3f} | oracle alone: {accuracy(0)} | 4 distractors: "
                  f"{accuracy(4)} | {dt:5.0f} s, {tokens / dt:,.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
