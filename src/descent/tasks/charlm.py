"""A character-level transformer language model on the Python standard library's own sources."""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._base import Task, mean_loss, seeded

__all__ = ["charlm", "stdlib_corpus", "CharWindows", "TinyGPT"]

VOCAB = 128  # ASCII; other bytes map to "?"


def stdlib_corpus(max_chars: int = 400_000) -> str:
    """The first ``max_chars`` ASCII characters of the stdlib's top-level ``*.py`` files, sorted by name.

    Present on every Python install, so it needs no download (the exact text depends on the
    Python version).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        text = text.encode("ascii", errors="replace").decode("ascii")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if total == 0:
        raise RuntimeError(f"no Python sources found under {root}")
    return "".join(parts)[:max_chars]


class CharWindows:
    """Windows of ``ctx + 1`` characters as ``(x, y)`` = (chars, next chars).

    With ``shuffle`` the window starts of step ``s`` are drawn from a generator seeded by
    ``(seed, s)``, so :meth:`at` is reproducible for resume; without it, iteration yields the
    first ``max_windows`` non-overlapping windows (a fixed validation set).
    """

    def __init__(self, data: Tensor, ctx: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 max_windows: int = 128) -> None:
        if len(data) <= ctx + 1:
            raise ValueError(f"Invalid data: {len(data)} characters for ctx={ctx}")
        self.data, self.ctx, self.batch_size = data, int(ctx), int(batch_size)
        self.shuffle, self.seed, self.max_windows = shuffle, int(seed), int(max_windows)

    def __len__(self) -> int:
        if self.shuffle:
            return max(1, len(self.data) // (self.ctx * self.batch_size))
        n = min(self.max_windows, (len(self.data) - 1) // self.ctx)
        return -(-n // self.batch_size)

    def _windows(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + torch.arange(self.ctx + 1)
        w = self.data[idx]
        return w[:, :-1], w[:, 1:]

    def at(self, step: int) -> tuple[Tensor, Tensor]:
        """The batch of global step ``step``."""
        if not self.shuffle:
            n = min(self.max_windows, (len(self.data) - 1) // self.ctx)
            i = int(step) % len(self)
            starts = torch.arange(i * self.batch_size, min(n, (i + 1) * self.batch_size)) * self.ctx
            return self._windows(starts)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        starts = torch.randint(0, len(self.data) - self.ctx - 1, (self.batch_size,), generator=g)
        return self._windows(starts)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self.at(i) for i in range(len(self)))

    def resized(self, batch_size: int) -> CharWindows:
        """The same text and seed with another batch size."""
        return CharWindows(self.data, self.ctx, batch_size, shuffle=self.shuffle, seed=self.seed,
                           max_windows=self.max_windows)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A GPT-2-style decoder: token + position embeddings, pre-norm blocks, a linear head."""

    def __init__(self, vocab: int = VOCAB, ctx: int = 64, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-character cross-entropy (nats)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _evaluate(task: Task, model: nn.Module) -> dict[str, float]:
    loss = mean_loss(task.loss_fn, model, task.val)
    return {"val_loss": loss, "val_bpc": loss / math.log(2)}


def charlm(seed: int = 0, batch_size: int = 32, ctx: int = 64, d: int = 64, layers: int = 2,
           max_chars: int = 400_000) -> Task:
    """Tiny transformer LM on stdlib source text; the first 90 % trains, the last 10 % validates."""
    text = stdlib_corpus(max_chars)
    data = torch.tensor(list(text.encode("ascii")), dtype=torch.long).clamp_(max=VOCAB - 1)
    cut = int(0.9 * len(data))
    train = CharWindows(data[:cut], ctx, batch_size, seed=seed)
    val = CharWindows(data[cut:], ctx, 64, shuffle=False)
    make_model = seeded(lambda: TinyGPT(VOCAB, ctx, d, max(1, d // 16), layers))
    return Task(name="charlm", description=f"char LM on {len(data):,} chars of stdlib source, "
                f"transformer d={d} x{layers} ctx={ctx}", model=make_model(seed), train=train, val=val, test=None,
                loss_fn=lm_loss, make_model=make_model, evaluate_fn=_evaluate, metric="val_loss", kind="language",
                recipe="llm", reference={"uniform over 128 chars (nats)": math.log(VOCAB)})
