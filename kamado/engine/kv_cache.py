"""Paged KV cache with a fixed budget, page reference counts and prefix sharing.

Keys/values live in one slot array per layer, `page_size` slots per page. A sequence owns a list of
pages; full pages are registered under a hash of every token up to their end, so a later request
whose prompt starts with the same tokens maps those pages instead of recomputing them (a chat turn
reuses its history). Pages nobody uses but that hold a registered prefix stay cached until the
space is needed (least recently released first). Values are stored in float16, as llama.cpp's
default cache type.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


class CacheFullError(RuntimeError):
    """Not enough free KV pages for a request right now."""


class PagedKVCache:
    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, head_dim_v: int, n_tokens: int, page_size: int = 16,
                 devices: list | None = None):
        """devices: where each layer's slots live (its layer computes there); default all on the CPU."""
        self.page_size = page_size
        self.n_pages = max(1, -(-n_tokens // page_size))
        slots = self.n_pages * page_size
        devices = devices or ["cpu"] * n_layer
        self.k = [torch.zeros(slots, n_head_kv, head_dim, dtype=torch.float16, device=d) for d in devices]
        self.v = [torch.zeros(slots, n_head_kv, head_dim_v, dtype=torch.float16, device=d) for d in devices]
        self.refs = [0] * self.n_pages
        self.free = list(range(self.n_pages - 1, -1, -1))
        self.cached: OrderedDict[int, bytes] = OrderedDict()  # released pages still holding a prefix, LRU first
        self.prefix: dict[bytes, int] = {}  # prefix hash -> page
        self.page_key: dict[int, bytes] = {}

    def available(self) -> int:
        return len(self.free) + len(self.cached)

    def allocate(self, n: int) -> list[int]:
        if n > self.available():
            raise CacheFullError(f"KV cache full: {n} pages needed, {self.available()} available")
        pages = []
        for _ in range(n):
            if self.free:
                page = self.free.pop()
            else:
                page, key = self.cached.popitem(last=False)
                del self.prefix[key], self.page_key[page]
            self.refs[page] = 1
            pages.append(page)
        return pages

    def release(self, pages: list[int]) -> None:
        for page in pages:
            self.refs[page] -= 1
            if self.refs[page] == 0:
                key = self.page_key.get(page)
                if key is None:
                    self.free.append(page)
                else:
                    self.cached[page] = key

    @staticmethod
    def chain(prev: bytes, tokens) -> bytes:
        return hashlib.blake2b(prev + np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()

    def match_prefix(self, tokens: list[int], limit: int) -> tuple[list[int], bytes]:
        """Pages holding the longest cached page-aligned prefix of tokens[:limit]; takes a reference on each."""
        pages, key = [], b""
        for start in range(0, limit - self.page_size + 1, self.page_size):
            nxt = self.chain(key, tokens[start : start + self.page_size])
            page = self.prefix.get(nxt)
            if page is None:
                break
            if self.refs[page] == 0:
                self.cached.pop(page)
            self.refs[page] += 1
            pages.append(page)
            key = nxt
        return pages, key

    def register(self, page: int, key: bytes) -> None:
        if key not in self.prefix:
            self.prefix[key] = page
            self.page_key[page] = key

    def slots(self, pages: list[int], start: int, stop: int) -> torch.Tensor:
        pos = torch.arange(start, stop)
        table = torch.tensor(pages, dtype=torch.long)
        return table[pos // self.page_size] * self.page_size + pos % self.page_size
