"""nanoGPT's character-level CPU run, re-implemented in PyTorch for side-by-side timing.

nanoGPT (github.com/karpathy/nanoGPT) cannot be downloaded on the benchmark machine, so
this file re-implements, line for line in behaviour (not in text), what its README's CPU
command runs::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False \\
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 \\
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

Facts taken from nanoGPT (model.py, train.py, config/train_shakespeare_char.py,
data/shakespeare_char/prepare.py):

- data: the vocabulary is every distinct character of the whole text, sorted (65 for
  Tiny Shakespeare); the first 90% of the characters train, the last 10% validate;
  a batch is ``batch_size`` windows at offsets ``torch.randint(len(data) - block_size)``.
- model: GPT-2 layout without biases (``bias=False``): token + learned position
  embeddings, pre-LayerNorm blocks of causal self-attention (one ``c_attn`` Linear to
  q, k, v; ``scaled_dot_product_attention(is_causal=True)``) and a 4x MLP with exact
  GELU, final LayerNorm, output head tied to the token embedding; weights N(0, 0.02),
  the residual projections (``c_proj``) N(0, 0.02 / sqrt(2 * n_layer)).
- optimiser: AdamW, betas (0.9, 0.99), eps 1e-8, weight decay 0.1 on tensors of 2 or
  more dimensions only, gradient clipping to norm 1.0, ``torch.manual_seed(1337)``.
- schedule: ``lr * (it + 1) / (warmup + 1)`` for ``it < warmup_iters=100``, then cosine
  from 1e-3 to ``min_lr=1e-4`` at ``lr_decay_iters=2000``.
- loop: ``estimate_loss`` (mean of ``eval_iters`` random-batch losses on each split, in
  ``eval()`` mode under ``no_grad``) at every ``eval_interval=250`` steps including step 0
  and step ``max_iters``; a checkpoint (``torch.save``) when the validation loss improves
  (after step 0); ``loss.item()`` printed every ``log_interval`` step; training steps
  ``0..max_iters`` inclusive (nanoGPT's loop breaks once ``iter_num > max_iters``, so it
  makes ``max_iters + 1`` updates; the last evaluation sees the model after ``max_iters``).

Run: ``python -m benchmarks.nanogpt_torch --data_dir=$FLAXEN_DATA --out_dir=/tmp/ng``.
The final line is JSON: wall/user/system seconds, peak RSS, and the held-out loss under
nanoGPT's protocol (``--final_eval_iters`` random batches, default 200).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:  # the benchmark reports a skipped row instead
    torch = None  # type: ignore[assignment]


def _build_model_classes() -> tuple[type, type]:
    """The model classes (defined lazily: this module imports without torch)."""

    class Block(nn.Module):
        def __init__(self, width: int, heads: int, dropout: float):
            super().__init__()
            self.heads, self.dropout = heads, dropout
            self.ln_1 = nn.LayerNorm(width, bias=False)
            self.c_attn = nn.Linear(width, 3 * width, bias=False)
            self.attn_proj = nn.Linear(width, width, bias=False)
            self.ln_2 = nn.LayerNorm(width, bias=False)
            self.c_fc = nn.Linear(width, 4 * width, bias=False)
            self.gelu = nn.GELU()
            self.mlp_proj = nn.Linear(4 * width, width, bias=False)
            self.resid_dropout = nn.Dropout(dropout)
            self.mlp_dropout = nn.Dropout(dropout)

        def attention(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(c, dim=2)
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in (q, k, v))
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
            return self.resid_dropout(self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attention(self.ln_1(x))
            return x + self.mlp_dropout(self.mlp_proj(self.gelu(self.c_fc(self.ln_2(x)))))

    class GPT(nn.Module):
        def __init__(self, vocab: int, context: int, layers: int, heads: int, width: int,
                     dropout: float = 0.0):
            super().__init__()
            self.wte = nn.Embedding(vocab, width)
            self.wpe = nn.Embedding(context, width)
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
            self.ln_f = nn.LayerNorm(width, bias=False)
            self.lm_head = nn.Linear(width, vocab, bias=False)
            self.wte.weight = self.lm_head.weight  # tied, in nanoGPT's direction
            for m in self.modules():
                if isinstance(m, nn.Linear | nn.Embedding):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
            for name, p in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(idx.shape[1], dtype=torch.long)
            x = self.drop(self.wte(idx) + self.wpe(pos))
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return Block, GPT


def load_splits(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(train, val, vocab)``: nanoGPT's char encoding and 90/10 split (uint16 ids)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    return ids[:n], ids[n:], len(chars)


def write_splits(path: str, out_dir: str) -> tuple[str, str, int]:
    """nanoGPT's ``prepare.py``: ``train.bin`` and ``val.bin`` (uint16 ids) in ``out_dir``;
    returns their paths and the vocabulary size."""
    train_ids, val_ids, vocab = load_splits(path)
    paths = os.path.join(out_dir, "train.bin"), os.path.join(out_dir, "val.bin")
    for ids, name in zip((train_ids, val_ids), paths):
        ids.tofile(name)
    return paths[0], paths[1], vocab


def get_batch(data: np.ndarray | str, batch: int,
              context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows; ``data`` a path is memory-mapped anew on every call, as
    nanoGPT does (it avoids a memmap leak)."""
    if isinstance(data, str):
        data = np.memmap(data, dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - context, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + context].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + context].astype(np.int64))
                     for i in ix])
    return x, y


def lr_at(it: int, a: argparse.Namespace) -> float:
    if it < a.warmup_iters:
        return a.learning_rate * (it + 1) / (a.warmup_iters + 1)
    if it > a.lr_decay_iters:
        return a.min_lr
    ratio = (it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.learning_rate - a.min_lr)


def estimate_loss(model: nn.Module, splits: Mapping[str, np.ndarray | str], iters: int,
                  a: argparse.Namespace) -> dict[str, float]:
    """Mean loss of ``iters`` random batches per split (nanoGPT's ``estimate_loss``)."""
    model.eval()
    out = {}
    for name, data in splits.items():
        losses = torch.zeros(iters)
        with torch.no_grad():
            for k in range(iters):
                x, y = get_batch(data, a.batch_size, a.block_size)
                losses[k] = model(x, y).item()
        out[name] = float(losses.mean())
    model.train()
    return out


def train(a: argparse.Namespace) -> dict[str, float]:
    """nanoGPT's training loop for the configuration in ``a``; returns the summary."""
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out_dir, exist_ok=True)
    train_data, val_data, vocab = write_splits(
        os.path.join(a.data_dir, "tinyshakespeare.txt"), a.out_dir)
    torch.manual_seed(1337)
    splits = {"train": train_data, "val": val_data}
    _, GPT = _build_model_classes()
    model = GPT(vocab, a.block_size, a.n_layer, a.n_head, a.n_embd)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a.learning_rate, betas=(0.9, a.beta2))
    best_val = 1e9
    x, y = get_batch(train_data, a.batch_size, a.block_size)
    it = 0
    last = {}
    while True:
        lr = lr_at(it, a)
        for g in opt.param_groups:
            g["lr"] = lr
        if it % a.eval_interval == 0:
            last = estimate_loss(model, splits, a.eval_iters, a)
            print(f"step {it}: train loss {last['train']:.4f}, val loss {last['val']:.4f}")
            if last["val"] < best_val:
                best_val = last["val"]
                if it > 0:
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "iter_num": it, "best_val_loss": best_val},
                               os.path.join(a.out_dir, "ckpt.pt"))
        loss = model(x, y)
        x, y = get_batch(train_data, a.batch_size, a.block_size)  # next batch, as nanoGPT
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if it % a.log_interval == 0:
            lossf = loss.item()  # nanoGPT reads the loss every log_interval steps
            if not a.quiet:
                print(f"iter {it}: loss {lossf:.4f}")
        it += 1
        if it > a.max_iters:
            break
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    final = estimate_loss(model, {"val": val_data}, a.final_eval_iters, a)["val"]
    return {"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime,
            "sys_s": r1.ru_stime - r0.ru_stime, "peak_rss_mb": r1.ru_maxrss / 1024,
            "val_loss_eval_iters": last.get("val", float("nan")),
            "eval_iters": a.eval_iters, "val_loss_200": final,
            "final_eval_iters": a.final_eval_iters, "steps": it,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=os.environ.get("FLAXEN_DATA", ""))
    p.add_argument("--out_dir", default="/tmp/nanogpt_torch")
    for name, default in (("eval_interval", 250), ("eval_iters", 20), ("log_interval", 1),
                          ("block_size", 64), ("batch_size", 12), ("n_layer", 4),
                          ("n_head", 4), ("n_embd", 128), ("max_iters", 2000),
                          ("lr_decay_iters", 2000), ("warmup_iters", 100),
                          ("final_eval_iters", 200)):
        p.add_argument(f"--{name}", type=int, default=default)
    for name, value in (("learning_rate", 1e-3), ("min_lr", 1e-4), ("beta2", 0.99),
                        ("weight_decay", 0.1), ("grad_clip", 1.0)):
        p.add_argument(f"--{name}", type=float, default=value)
    p.add_argument("--quiet", action="store_true", help="no per-step line (log_interval)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads (0: PyTorch's default, one per core)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if torch is None:
        print("Error: PyTorch is not installed (pip install torch); nothing to run.",
              file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(a.data_dir, "tinyshakespeare.txt")):
        print("Error: --data_dir (or FLAXEN_DATA) must hold tinyshakespeare.txt.",
              file=sys.stderr)
        return 2
    print(json.dumps(train(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
