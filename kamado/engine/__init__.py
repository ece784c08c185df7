"""The generation core: scheduler with continuous batching, paged KV cache, sampler, stop strings, scoring."""

from kamado.engine.engine import ContextOverflowError, Engine, FinishEvent, Handle, Request, TokenEvent
from kamado.engine.kv_cache import CacheFullError, PagedKVCache
from kamado.engine.sampler import SampledToken, Sampler, SamplingParams
from kamado.engine.scoring import embed, perplexity
from kamado.engine.stop import StopMatcher

__all__ = [
    "CacheFullError", "ContextOverflowError", "Engine", "FinishEvent", "Handle", "PagedKVCache", "Request", "SampledToken",
    "Sampler", "SamplingParams", "StopMatcher", "TokenEvent", "embed", "perplexity",
]
