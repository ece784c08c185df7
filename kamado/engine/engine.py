"""The generation engine: continuous batching over a paged KV cache, one worker thread, thread-safe handles.

    engine = Engine(model, tokenizer, n_ctx=2048, n_seq_max=8)
    handle = engine.submit(Request(prompt_tokens, SamplingParams(temperature=0), max_tokens=64, stop=["\\n\\n"]))
    for event in handle:        # TokenEvent ... then one FinishEvent
        ...
    handle.cancel()             # from any thread: the request's pages are released at the next step

Each step the worker admits waiting requests (mapping cached prefix pages), runs one prompt chunk
(up to n_batch tokens) of one sequence with a long prompt, then one forward of rows: one per decoding
sequence, and the prompt tokens of sequences whose uncached prompt is short (at most ROWS_PER_STEP
tokens) in the rows left free. Long prompt chunks are never mixed with other sequences and every op
computes rows independently, so a request's tokens do not depend on what else is running (batch
invariance): up to ROWS_PER_STEP rows go through the CPU decode kernel (kamado/kernels/cpu.py), and
a short prompt's rows are computed alike whether they share a step or not, or in which step. Rows
attend together, in calls grouped by a key width each row sets alone (kamado/engine/decode_attention.py).

Why short prompts ride along: a forward of its own for a 14-token prompt of Gemma 3 270M took ~55 ms
(two single-row decode steps) and stalled every running stream meanwhile: ~13% of the engine's time in
`kamado serve` with 8 streams (docs/BENCHMARKS.md). As rows of a decode step they add their rows' share.
"""

from __future__ import annotations

import atexit
import math
import queue
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from kamado.engine.cuda_graph import DecodeGraphs
from kamado.engine.decode_attention import RowGroup, attend_rows, group_rows
from kamado.engine.kv_cache import CacheFullError, PagedKVCache
from kamado.engine.sampler import SampledToken, Sampler, SamplingParams, pick_rows, picks_from, rank_rows
from kamado.engine.stop import StopMatcher
from kamado.kernels.cpu import DECODE_ROWS
from kamado.kernels.heap import release_free_heap
from kamado.kernels.openmp import release_thread_pool
from kamado.models.decoder import attention_of

# Rows of one forward that keep every row on the CPU decode kernel (batch invariance); also the longest uncached
# prompt computed as rows of decode steps rather than as a chunk of its own.
ROWS_PER_STEP = DECODE_ROWS
# llama.cpp computes a batch in micro-batches of this many rows (its default n_ubatch)
LLAMACPP_UBATCH = 512


class ContextOverflowError(ValueError):
    """A prompt that does not fit the context window."""


@dataclass
class Request:
    prompt: Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = 16  # None or <= 0: until the context is full
    stop: Sequence[str] = ()
    ignore_eos: bool = False


@dataclass
class TokenEvent:
    token: int
    text: str  # newly released text (stop strings held back, never emitted)
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class FinishEvent:
    reason: str  # "stop", "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    text: str = ""  # text released at the end (held back by the stop matcher or detokenizer)
    error: str | None = None


class Handle:
    """One submitted request: iterate for events; cancel() from any thread."""

    def __init__(self, engine: Engine, request: Request):
        self.engine, self.request = engine, request
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self.engine._wake()

    def __iter__(self) -> Iterator[TokenEvent | FinishEvent]:
        while True:
            event = self.events.get()
            yield event
            if isinstance(event, FinishEvent):
                return


class _Sequence:
    def __init__(self, handle: Handle, tokens: list[int], pages: list[int], key: bytes, n_cached: int, engine: Engine):
        self.handle = handle
        self.tokens = tokens  # prompt + generated
        self.n_prompt = len(handle.request.prompt)
        self.pages, self.key = pages, key
        self.n_computed = n_cached  # tokens whose K/V are in the cache
        self.n_cached = n_cached
        self.generated = 0
        self.sampler = Sampler(handle.request.params, engine.model.cfg.n_vocab)
        self.detok = engine.tokenizer.stream() if engine.tokenizer is not None else None
        self.stop = StopMatcher(handle.request.stop) if handle.request.stop else None
        self.done = False
        # Decided once, from the request and the cache alone: its prompt's tokens always take the same path.
        # (CUDA graphs decode one row per sequence: there every prompt goes as chunks.)
        self.prompt_in_rows = engine._graphs is None and not engine.llamacpp_batches and self.n_prompt - n_cached <= ROWS_PER_STEP
        # llama-server evaluates a sliding-window model's prompt in batches cut where 4 + its ubatch and 4 tokens remain
        # (server-context.cpp, for its context checkpoints); the "ggml" backend's rows depend on their batch, so it
        # cuts them there too
        swa = engine.llamacpp_batches and bool(engine.model.cfg.sliding_window)
        self.prompt_cuts = [c for c in (self.n_prompt - 4 - engine.chunk, self.n_prompt - 4) if swa and c > n_cached]


@dataclass
class _InFlight:
    """A graphed decode step launched but not yet accepted: every row greedy, its tokens picked on the device and on
    their way to the host (DecodeGraphs.next_logits).

    While the GPU computes it, the engine launches the next step from these device tokens and only then waits for them:
    the host's work per token (the picks' transfer, accepting, filling and launching the next graph: 1.2-1.8 ms against
    ~4.2 ms of GPU work for Llama-3-8B Q4_K_M on an H200, docs/GPU.md) overlaps the GPU's instead of adding to it.
    When a sequence ends on its in-flight token, the step launched after it was computed in vain; the keys/values it
    stored lie in pages that steps launched later overwrite, in stream order, before anything reads them."""

    rows: list[tuple[_Sequence, int]]
    logits: torch.Tensor  # on the device, for the samplers' own error messages if a row's logits are not finite
    tokens: torch.Tensor  # each row's picked token, on the device: the next step's input
    ranked: tuple[torch.Tensor, torch.Tensor]  # rank_rows' tensors, copied (or being copied) to the host
    ready: torch.cuda.Event | None  # recorded after the copy (None on the CPU, where the copy is done)


class Engine:
    def __init__(self, model, tokenizer=None, n_ctx: int = 2048, n_seq_max: int = 8, kv_tokens: int | None = None,
                 n_batch: int = 512, page_size: int = 16):
        cfg = model.cfg
        self.model, self.tokenizer = model, tokenizer
        self.n_ctx, self.n_seq_max = n_ctx, n_seq_max
        self.cache = PagedKVCache(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, cfg.head_dim_v, kv_tokens or n_ctx * n_seq_max, page_size,
                                  getattr(model, "layer_devices", None))
        self._graphs = DecodeGraphs(model, self.cache) if DecodeGraphs.supported(model) else None  # whole model on one GPU
        self._in_flight: _InFlight | None = None
        self.eog = set(getattr(tokenizer, "eog_ids", ()) or ())
        # llama.cpp's batches, one sequence at a time and no prefix reuse (the "ggml" backend reproduces llama.cpp's
        # bits, which depend on how rows are batched): each prompt as llama-server runs it, then one row a step
        self.llamacpp_batches = getattr(model, "ggml_order", False)
        self.chunk = min(n_batch, LLAMACPP_UBATCH) if self.llamacpp_batches else n_batch  # prompt rows per forward
        self._slot: tuple[list[int], list[int]] = ([], [])  # llamacpp_batches: the last request's tokens and pages
        self._waiting: list[Handle] = []
        self._running: list[_Sequence] = []
        self._lock = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        _LIVE_ENGINES.add(self)
        release_thread_pool()  # allocating the cache may have started this thread's OpenMP workers

    # ---- public API -------------------------------------------------------------------------
    def submit(self, request: Request) -> Handle:
        n = len(request.prompt)
        if n == 0:
            raise ValueError("the prompt is empty: at least one token is needed")
        if self._closed:
            raise RuntimeError("the engine is closed")
        if n >= self.n_ctx:
            raise ContextOverflowError(f"Requested tokens ({n}) exceed context window of {self.n_ctx}")
        handle = Handle(self, request)
        release_thread_pool()  # this thread now waits on the engine's: see kamado/kernels/openmp.py
        with self._lock:
            self._waiting.append(handle)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="kamado-engine", daemon=True)
                self._worker.start()
            self._lock.notify()
        return handle

    def generate(self, request: Request) -> list[TokenEvent | FinishEvent]:
        return list(self.submit(request))

    def close(self) -> None:
        """Stop the worker thread (running requests are left unfinished); called at interpreter exit."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._worker is not None:
            self._worker.join()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    # ---- worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._waiting and not self._running and not self._closed:
                    release_thread_pool()  # idle: another engine (bench -m A -m B, a server's models) may compute meanwhile
                    release_free_heap()  # and this thread's malloc arena gives back the scratch memory of the requests
                while not self._waiting and not self._running and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
            try:
                with torch.inference_mode():
                    self.step()
            except Exception as e:  # nothing may kill the worker: fail the running requests instead
                self._in_flight = None
                for seq in list(self._running):
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")

    def step(self) -> None:
        if self._in_flight is not None and self._continue_in_flight():
            return
        self._reap_cancelled()
        self._admit()
        chunked = next((s for s in self._running if s.n_computed < s.n_prompt and not s.prompt_in_rows), None)
        if chunked is not None:
            self._prefill_chunk(chunked)
        rows = [(s, len(s.tokens) - 1) for s in self._running if s.n_computed >= s.n_prompt and not s.done and s is not chunked]
        # Prompt rows fill the rows left free. With ROWS_PER_STEP decode rows or more (n_seq_max above it) the step is
        # past the decode kernel and invariance is gone anyway: then prompts are not held back.
        limit = ROWS_PER_STEP if len(rows) < ROWS_PER_STEP else math.inf
        for s in self._running:
            if s.prompt_in_rows and s.n_computed < s.n_prompt and len(rows) < limit:
                stop = min(s.n_prompt, s.n_computed + limit - len(rows))
                rows += [(s, p) for p in range(s.n_computed, stop)]
        if rows:
            self._forward_rows(rows)

    def _reap_cancelled(self) -> None:
        with self._lock:
            for h in [h for h in self._waiting if h.cancelled.is_set()]:
                self._waiting.remove(h)
                h.events.put(FinishEvent("cancelled", len(h.request.prompt), 0, 0))
        for seq in [s for s in self._running if s.handle.cancelled.is_set()]:
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting or len(self._running) >= (1 if self.llamacpp_batches else self.n_seq_max):
                    return
                handle = self._waiting[0]
            prompt = list(handle.request.prompt)
            if self.llamacpp_batches:
                pages, key, n_cached = self._slot_prefix(prompt)
            else:
                pages, key = self.cache.match_prefix(prompt, len(prompt) - 1)
                n_cached = len(pages) * self.cache.page_size
            need = -(-(len(prompt) + 1) // self.cache.page_size) - len(pages)
            try:
                pages += self.cache.allocate(need)
            except CacheFullError as e:
                self.cache.release(pages)
                if self._running:
                    return  # wait for running requests to free pages
                with self._lock:
                    self._waiting.pop(0)
                handle.events.put(FinishEvent("error", len(prompt), 0, 0, error=str(e)))
                continue
            with self._lock:
                self._waiting.pop(0)
            self._running.append(_Sequence(handle, prompt, pages, key, n_cached, self))

    def _slot_prefix(self, prompt: list[int]) -> tuple[list[int], bytes, int]:
        """llama-server's prompt cache for one slot: the new prompt keeps the K/V of its longest common prefix with the
        slot's last request (at least one prompt token is computed); the other pages are freed. A sliding-window
        model keeps nothing (the server restores no checkpoint for these prompts)."""
        tokens, pages = self._slot
        self._slot = ([], [])
        n = 0
        if not self.model.cfg.sliding_window:
            limit = min(len(tokens), len(prompt) - 1)
            while n < limit and tokens[n] == prompt[n]:
                n += 1
        keep = -(-n // self.cache.page_size)
        self.cache.release(pages[keep:])
        return pages[:keep], b"", n

    def _prefill_attend(self, seq: _Sequence, start: int, stop: int):
        """An `attend` callback for the prompt rows start..stop-1 of one sequence."""
        cache = self.cache
        indices = {}  # (first key position, device) -> slot and position tensors, shared by the layers of a chunk

        def index(first, device):
            if (first, device) not in indices:  # built on the CPU, copied to the layer's device once per chunk, not once per layer
                parts = (cache.slots(seq.pages, start, stop), cache.slots(seq.pages, first, stop), torch.arange(start, stop),
                         torch.arange(first, stop))
                indices[(first, device)] = tuple(t.to(device) for t in parts)
            return indices[(first, device)]

        def attend(spec, q, k, v):
            kc, vc = cache.k[spec.index], cache.v[spec.index]
            slots, k_slots, q_pos, k_pos = index(max(0, start - spec.window + 1) if spec.window else 0, kc.device)
            # index_copy_/index_select: ~5x faster on the CPU than indexing with a tensor (index_put/index)
            kc.index_copy_(0, slots, k.to(kc.dtype))
            vc.index_copy_(0, slots, v.to(vc.dtype))
            return attention_of(spec)(q, kc.index_select(0, k_slots), vc.index_select(0, k_slots), q_pos, k_pos, spec.scale,
                                      spec.window, spec.softcap)

        return attend

    def _rows_attend(self, rows: list[tuple[_Sequence, int]]):
        """An `attend` callback for query rows (sequence, position), all attended in batched calls (decode_attention.py).
        Every row's K/V is stored before any row attends, so a prompt's rows see each other's."""
        cache = self.cache
        tables = {}  # (window, device) -> (slots to store the rows' K/V in, row groups), shared by the layers of a step

        def table(window, device):
            if window and (window, device) not in tables and all(pos < window for _, pos in rows):
                tables[(window, device)] = table(0, device)  # no row has a key outside its window: the keys of no window
            if (window, device) not in tables:
                key_slots = [cache.slots(s.pages, max(0, pos - window + 1) if window else 0, pos + 1) for s, pos in rows]
                groups = [RowGroup(*(t.to(device) for t in (g.rows, g.slots, g.hidden))) for g in group_rows(key_slots)]
                tables[(window, device)] = torch.cat([slots[-1:] for slots in key_slots]).to(device), groups, key_slots
            return tables[(window, device)]

        def attend(spec, q, k, v):
            kc, vc = cache.k[spec.index], cache.v[spec.index]
            write, groups, key_slots = table(spec.window, kc.device)
            kc.index_copy_(0, write, k.to(kc.dtype))
            vc.index_copy_(0, write, v.to(vc.dtype))
            if spec.ggml_order:  # row by row through llama.cpp's kernel for one query row (batch-invariant by nature)
                compute = attention_of(spec)
                return torch.cat([compute(q[i : i + 1], kc.index_select(0, slots), vc.index_select(0, slots), torch.tensor([pos]),
                                          torch.arange(pos + 1 - len(slots), pos + 1), spec.scale, spec.window, spec.softcap)
                                  for i, ((_, pos), slots) in enumerate(zip(rows, key_slots, strict=True))])
            if len(groups) == 1:  # rows in batch order
                return attend_rows(q, kc, vc, groups[0], spec.scale, spec.softcap)
            out = q.new_empty(q.shape[0], q.shape[1] * vc.shape[2])
            for g in groups:
                out.index_copy_(0, g.rows, attend_rows(q.index_select(0, g.rows), kc, vc, g, spec.scale, spec.softcap))
            return out

        return attend

    def _prefill_chunk(self, seq: _Sequence) -> None:
        start = seq.n_computed
        stop = min([seq.n_prompt, start + self.chunk] + [c for c in seq.prompt_cuts if c > start])
        tokens = torch.tensor(seq.tokens[start:stop])
        last = stop == seq.n_prompt
        out_rows = torch.tensor([stop - start - 1]) if last else torch.tensor([], dtype=torch.long)
        logits = self.model(tokens, torch.arange(start, stop), self._prefill_attend(seq, start, stop), out_rows)
        self._computed(seq, stop)
        if last:
            self._accept(seq, seq.sampler.sample(logits[0], seq.tokens))

    def _forward_rows(self, rows: list[tuple[_Sequence, int]]) -> None:
        """One forward of the rows (sequence, position); a token is sampled for each row at its sequence's last token
        (every decode row; a prompt's last row)."""
        last = [i for i, (s, p) in enumerate(rows) if p == len(s.tokens) - 1]
        if self._graphs is not None:  # decode rows only (prompt_in_rows is off): every row is last
            logits = self._graphs.logits([(s.tokens[p], p, s.pages) for s, p in rows])
            if self._graphs.pipeline and all(s.sampler.is_greedy for s, _ in rows):
                self._in_flight = self._send(rows, logits)
                return
        else:
            tokens = torch.tensor([s.tokens[p] for s, p in rows])
            positions = torch.tensor([p for _, p in rows])
            logits = self.model(tokens, positions, self._rows_attend(rows), torch.tensor(last, dtype=torch.long))
        for s, p in rows:
            self._computed(s, max(s.n_computed, p + 1))
        seqs = [rows[i][0] for i in last]
        picked = self._pick_together(seqs, logits)
        for i, s in enumerate(seqs):
            self._accept(s, picked[i] if i in picked else s.sampler.sample(logits[i], s.tokens))

    @staticmethod
    def _send(rows: list[tuple[_Sequence, int]], logits: torch.Tensor) -> _InFlight:
        """Rank greedy rows where the logits are and start copying the result to the host, without waiting for it."""
        ranked = rank_rows(logits, [s.sampler for s, _ in rows])
        tokens = ranked[1][:, 0]
        if not logits.is_cuda:
            return _InFlight(rows, logits, tokens, ranked, None)
        host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in ranked)
        for target, source in zip(host, ranked, strict=True):
            target.copy_(source, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return _InFlight(rows, logits, tokens, host, ready)

    def _continue_in_flight(self) -> bool:
        """Launch the step after the in-flight one where nothing has changed (the same sequences, none cancelled, none
        waiting to join, the step fits its graph), then accept the in-flight step's tokens. False when no step is in
        flight afterwards: the caller then takes a step of its own."""
        flight, self._in_flight = self._in_flight, None
        following = None
        with self._lock:
            unchanged = not self._waiting and [s for s, _ in flight.rows] == self._running
        if unchanged and not any(s.handle.cancelled.is_set() for s, _ in flight.rows):
            logits = self._graphs.next_logits(flight.tokens, [s.pages for s, _ in flight.rows])
            if logits is not None:
                following = self._send([(s, p + 1) for s, p in flight.rows], logits)
        self._accept_in_flight(flight)
        # If a sequence ended, the following step is dropped and the next one computes its rows again, as the step-by-step
        # engine would: in fewer rows, whose bucket may take other kernels (one row a GEMV, more a GEMM), hence other bits.
        # Its keys/values are rewritten in place.
        if following is not None and not any(s.done for s, _ in following.rows):
            self._in_flight = following
        return self._in_flight is not None

    def _accept_in_flight(self, flight: _InFlight) -> None:
        if flight.ready is not None:
            flight.ready.synchronize()
        seqs = [s for s, _ in flight.rows]
        picks = picks_from(*flight.ranked, [s.sampler for s in seqs])
        for i, (s, p) in enumerate(flight.rows):
            if s.done:
                continue
            self._computed(s, max(s.n_computed, p + 1))
            self._accept(s, picks[i] if picks is not None else s.sampler.sample(flight.logits[i], s.tokens))

    @staticmethod
    def _pick_together(seqs: list[_Sequence], logits: torch.Tensor) -> dict[int, SampledToken]:
        """Tokens of greedy and top-k-decided rows picked from their best logits, ranked for all rows at once where the
        logits are (pick_rows); other rows go through their Sampler."""
        rows = [i for i, s in enumerate(seqs) if s.sampler.is_greedy or s.sampler.top_k_decides]
        chosen = logits if len(rows) == len(seqs) else logits[rows]  # indexing would copy every row
        picks = pick_rows(chosen, [seqs[i].sampler for i in rows]) if rows else None
        return dict(zip(rows, picks, strict=True)) if picks is not None else {}

    def _computed(self, seq: _Sequence, n: int) -> None:
        """K/V of seq.tokens[:n] are stored: register newly completed pages for prefix sharing (not with llama.cpp's
        batches, whose slot pages are rewritten past the common prefix)."""
        ps = self.cache.page_size
        if not self.llamacpp_batches:
            for p in range(seq.n_computed // ps, n // ps):
                seq.key = self.cache.chain(seq.key, seq.tokens[p * ps : (p + 1) * ps])
                self.cache.register(seq.pages[p], seq.key)
        seq.n_computed = n

    def _accept(self, seq: _Sequence, sampled: SampledToken) -> None:
        req = seq.handle.request
        seq.generated += 1
        if sampled.id in self.eog and not req.ignore_eos:
            self._finish(seq, "stop")
            return
        text = seq.detok.feed(sampled.id) if seq.detok is not None else ""
        hit = False
        if seq.stop is not None:
            text, hit = seq.stop.feed(text)
        seq.handle.events.put(TokenEvent(sampled.id, text, sampled.logprob, sampled.top))
        seq.tokens.append(sampled.id)
        if hit:
            self._finish(seq, "stop", flush=False)
        elif req.max_tokens and req.max_tokens > 0 and seq.generated >= req.max_tokens:
            self._finish(seq, "length")
        elif len(seq.tokens) >= self.n_ctx:
            self._finish(seq, "length")
        elif len(seq.tokens) > len(seq.pages) * self.cache.page_size:
            try:
                seq.pages += self.cache.allocate(1)
            except CacheFullError as e:
                self._finish(seq, "error", error=str(e))
        elif self._graphs is not None and len(seq.tokens) + 1 > len(seq.pages) * self.cache.page_size:
            self._page_ahead(seq)

    def _page_ahead(self, seq: _Sequence) -> None:
        """The page of the position after the next one, a step early where the cache has one free: the pipelined decode
        launches that step before this step's token is accepted (DecodeGraphs.next_logits), and without the page it
        falls back to a host-filled step (at every 16th position of any row: most steps of 8 rows at different lengths)."""
        try:
            seq.pages += self.cache.allocate(1)
        except CacheFullError:
            pass  # the step is then filled on the host, which allocates the page as before

    def _finish(self, seq: _Sequence, reason: str, flush: bool = True, error: str | None = None) -> None:
        text = ""
        if flush and reason in ("stop", "length"):
            text = seq.detok.flush() if seq.detok is not None else ""
            if seq.stop is not None:
                text, hit = seq.stop.feed(text)
                text += "" if hit else seq.stop.flush()
        seq.done = True
        self._running.remove(seq)
        if self.llamacpp_batches and reason in ("stop", "length"):
            self.cache.release(self._slot[1])
            self._slot = (seq.tokens[: seq.n_computed], seq.pages)
        else:
            self.cache.release(seq.pages)
        seq.pages = []
        seq.handle.events.put(FinishEvent(reason, seq.n_prompt, seq.generated, seq.n_cached, text, error))



# Torch aborts the process if a worker thread is still alive at interpreter exit: stop them first.
_LIVE_ENGINES: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [engine.close() for engine in list(_LIVE_ENGINES)])
