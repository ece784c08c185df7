"""Whole-sequence scoring outside the scheduler: perplexity exactly as llama-perplexity, and embeddings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kamado.kernels.openmp import release_thread_pool
from kamado.models import is_encoder, solo_attend

OUTPUT_ROWS_PER_PASS = 32  # bounds the logits scratch (rows x vocab float32)


def perplexity(model, tokens: Sequence[int], n_ctx: int, bos_id: int | None) -> tuple[float, list[float]]:
    """llama-perplexity's method: chunks of n_ctx tokens, BOS first in each, score the second half.

    Returns (PPL, per-token negative log-likelihoods). tokens: the whole text tokenized with BOS.
    """
    if is_encoder(model):
        raise ValueError(f"{model.cfg.arch} is an encoder model: it has no next-token logits to score perplexity with")
    n_chunks = len(tokens) // n_ctx
    if n_chunks == 0:
        raise ValueError(f"perplexity needs at least n_ctx={n_ctx} tokens, the text has {len(tokens)}")
    nll: list[float] = []
    with torch.inference_mode():
        for c in range(n_chunks):
            chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
            if bos_id is not None:
                chunk[0] = bos_id
            ids = torch.tensor(chunk)
            nll += second_half_nll(model, model.hidden(ids, torch.arange(n_ctx), solo_attend(model.cfg.n_layer)), ids)
    return math.exp(sum(nll) / len(nll)), nll


def second_half_nll(model, hidden: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """Negative log-likelihoods of a chunk's second half (llama-perplexity's scored tokens) from its hidden states."""
    n_ctx, nll = len(ids), []
    for a in range(n_ctx // 2, n_ctx - 1, OUTPUT_ROWS_PER_PASS):
        b = min(n_ctx - 1, a + OUTPUT_ROWS_PER_PASS)
        logp = torch.log_softmax(model.logits(hidden[a:b]).double(), dim=-1)
        nll += (-logp[torch.arange(b - a), ids[a + 1 : b + 1]]).tolist()
    return nll


def embed(model, tokens: Sequence[int], pooling: str, normalize: bool = False) -> torch.Tensor:
    """Final hidden states (a decoder's final-normed ones, an encoder's last layer) pooled as the model says:
    none -> (T, n_embd); mean/cls/last -> (n_embd,). normalize: unit Euclidean length (llama.cpp's --embd-normalize 2)."""
    ids = torch.tensor(list(tokens))
    with torch.inference_mode():
        if is_encoder(model):
            h = model.encode(ids)
        else:
            h = model.hidden(ids, torch.arange(len(ids)), solo_attend(model.cfg.n_layer))
    release_thread_pool()  # a server thread computed this beside the engine's (kamado/kernels/openmp.py)
    if pooling == "mean":
        h = h.mean(0)
    elif pooling == "cls":
        h = h[0]
    elif pooling == "last":
        h = h[-1]
    elif pooling != "none":
        raise ValueError(f"pooling {pooling!r} is not supported; supported: none, mean, cls, last")
    return torch.nn.functional.normalize(h, dim=-1) if normalize else h
