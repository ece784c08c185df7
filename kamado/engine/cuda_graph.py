"""CUDA graphs for the engine's decode step: one replay instead of ~2,000 kernel launches (docs/GPU.md, "CUDA graphs").

A decode step on the GPU was host-bound: every eager torch op costs ~20 µs of Python and launch time, and a
Llama-3-8B step has ~1,965 of them. Here the whole forward of a decode batch (32 layers + output) is captured once
per shape and replayed. Shapes are bucketed: rows to the next power of two (padding rows repeat row 0, so they
compute and store exactly row 0's keys/values), keys to the next power of two >= the longest sequence. Attention
reads the paged KV cache through a fixed-shape slot table and hides keys beyond each row's position, so nothing
inside the graph depends on Python-side lengths.

Everything that is not fixed-shape GPU work stays outside the graph and is copied into static buffers each step:
the embedding rows (looked up on the CPU from the mmap), the rope tables (ggml's float32 recipe, on the CPU), the
slot indices. `capture=False` runs the same static-buffer forward eagerly, which is how the CPU tests check it.

`next_logits` runs the step after the last one for the same rows without the host: its tokens are the ones the
device picked (greedy rows), their embeddings are dequantized on the device from a copy of the embedding table,
positions advance by one there, and the slots and rope values are read from tables filled when the graph's inputs
were last filled on the host. So the engine can launch step t + 1 before it waits for step t's tokens
(kamado/engine/engine.py, `_InFlight`): the host's work of a step then overlaps the GPU's instead of following it.
"""

from __future__ import annotations

import os

import torch

from kamado.kernels import QuantTensor

MIN_KEYS = 64  # smallest key bucket: fewer graphs for short contexts, negligible extra attention work


def _bucket(n: int, least: int = 1) -> int:
    return max(least, 1 << (n - 1).bit_length())


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_table: torch.Tensor, positions: torch.Tensor,
                    scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """One query row per sequence, all sequences at once: q (B, H, D); slot_table (B, S) holds the cache slot of each
    sequence's key position 0..S-1 (entries past a row's position may point anywhere: they are hidden); -> (B, H*Dv).

    The same arithmetic as kamado.models.blocks.attention (fp16 keys/values, float32 math), batched over rows.
    """
    n_rows, n_head, head_dim = q.shape
    n_kv = k_cache.shape[1]
    k = k_cache[slot_table].float()  # (B, S, Hkv, D)
    v = v_cache[slot_table].float()
    qg = q.float().reshape(n_rows, n_kv, n_head // n_kv, head_dim)
    scores = torch.einsum("bkgd,bskd->bkgs", qg, k)
    scores = torch.tanh(scores * (scale / softcap)) * softcap if softcap else scores * scale
    delta = positions[:, None] - torch.arange(slot_table.shape[1], device=slot_table.device)[None, :]
    visible = delta >= 0
    if window:
        visible &= delta < window
    probs = torch.softmax(scores.masked_fill(~visible[:, None, None, :], float("-inf")), dim=-1)
    out = torch.einsum("bkgs,bskd->bkgd", probs, v)
    return out.reshape(n_rows, n_head * v.shape[-1])


class _Shape:
    """Static input buffers of one (rows, keys) bucket, and its captured graph once there is one."""

    def __init__(self, model, n_rows: int, n_keys: int, device: torch.device):
        long = dict(dtype=torch.long, device=device)
        self.x = torch.zeros(n_rows, model.cfg.n_embd, device=device)
        self.positions = torch.zeros(n_rows, **long)
        self.write_slots = torch.zeros(n_rows, **long)
        self.slot_table = torch.zeros(n_rows, n_keys, **long)
        # keyed as DecoderModel.hidden keys its rope tables, so hidden() finds them and computes none itself
        ropes = {(id(rope), layer.device): rope for rope, layer in zip(model.ropes, model.layers, strict=True)}
        self.trig = {key: tuple(torch.zeros(n_rows, rope.spec.n_dims // 2, device=device) for _ in "cs") for key, rope in ropes.items()}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        # what the host last filled in: each row's position and how many of its pages the slot table holds
        self.positions_filled: list[int] = []
        self.pages_filled: list[int] = []
        self.rope_tables: dict | None = None  # trig key -> (cos, sin) of every key position of the bucket (next_logits)


class DecodeGraphs:
    """Decode forwards of a model whose layers and output all sit on one CUDA device, replayed from CUDA graphs."""

    def __init__(self, model, cache, capture: bool = True, pipeline: bool | None = None):
        """pipeline: the engine launches a greedy step before it accepts the last one's tokens (`next_logits`);
        default on, KAMADO_DECODE_PIPELINE=0 turns it off."""
        self.model, self.cache, self.capture = model, cache, capture
        self.pipeline = os.environ.get("KAMADO_DECODE_PIPELINE", "1") != "0" if pipeline is None else pipeline
        self.device = model.output_device
        self.ropes = {id(rope): rope for rope in model.ropes}
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.pool = None  # one memory pool for every graph: they never run concurrently
        self.last: _Shape | None = None  # the shape of the last step (next_logits continues it)
        self.embedding = None  # the token embedding table on the device (next_logits), copied on first use

    @staticmethod
    def supported(model) -> bool:
        """All layers and the output on one CUDA device, no experts (MoE routing syncs with the host); KAMADO_CUDA_GRAPHS=0 turns it off."""
        devices = set(getattr(model, "layer_devices", None) or ["cpu"]) | {getattr(model, "output_device", torch.device("cpu"))}
        return (os.environ.get("KAMADO_CUDA_GRAPHS", "1") != "0" and len(devices) == 1 and torch.device(devices.pop()).type == "cuda"
                and not model.cfg.n_expert)

    def logits(self, rows: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        """rows: (last token, its position, the sequence's pages) per decoding sequence -> float32 logits (rows, vocab) on the
        device (the engine picks greedy rows there and copies the others' rows to its samplers)."""
        n = len(rows)
        n_rows = _bucket(n)
        n_keys = _bucket(max(pos for _, pos, _ in rows) + 1, MIN_KEYS)
        rows = rows + [rows[0]] * (n_rows - n)
        shape = self.shapes.get((n_rows, n_keys))
        if shape is None:
            shape = self.shapes[(n_rows, n_keys)] = _Shape(self.model, n_rows, n_keys, self.device)
        self._fill(shape, rows)
        return self._run(shape, n)

    def next_logits(self, tokens: torch.Tensor, pages: list[list[int]]) -> torch.Tensor | None:
        """The decode step after the last one, for the same rows, each fed its token picked on the device (tokens: one
        per row, on the device; pages: each row's KV pages now): logits as `logits` returns them. A page the slot table
        lacks is written into it on the device (the engine allocates it a step ahead). None where the step does not fit
        the last step's graph (a position past its key bucket, or in a page not allocated yet): the engine then fills it
        on the host."""
        shape = self.last
        page_size, n_keys = self.cache.page_size, shape.slot_table.shape[1]
        new_pages = []
        for i, (pos, filled) in enumerate(zip(shape.positions_filled, shape.pages_filled, strict=True)):
            page, own = (pos + 1) // page_size, pages[i if i < len(pages) else 0]  # padding rows repeat row 0
            if pos + 1 >= n_keys or (page >= filled and page >= len(own)):
                return None
            if page >= filled:
                new_pages.append((i, page, own[page]))
        for i, page, at in new_pages:  # device-side writes (arange on the device): no copy from the host, no wait
            first, stop = page * page_size, min((page + 1) * page_size, n_keys)
            shape.slot_table[i, first:stop] = torch.arange(at * page_size, at * page_size + stop - first, device=self.device)
            shape.pages_filled[i] = page + 1
        shape.positions_filled = [pos + 1 for pos in shape.positions_filled]
        n, n_rows = len(tokens), shape.x.shape[0]
        padded = torch.cat([tokens, tokens[:1].expand(n_rows - n)])  # padding rows repeat row 0, as in `logits`
        shape.x.copy_(self._embed(padded))
        shape.positions.add_(1)
        shape.write_slots.copy_(shape.slot_table.gather(1, shape.positions[:, None])[:, 0])
        if shape.rope_tables is None:
            every = torch.arange(n_keys)
            shape.rope_tables = {key: tuple(t.to(self.device) for t in self.ropes[key[0]].cos_sin(every)) for key in shape.trig}
        for key, (cos, sin) in shape.trig.items():
            cos_table, sin_table = shape.rope_tables[key]
            cos.copy_(cos_table.index_select(0, shape.positions))
            sin.copy_(sin_table.index_select(0, shape.positions))
        return self._run(shape, n)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """model.embed on the device: the same dequantization and scaling, so the same float32 rows."""
        if self.embedding is None:
            table = self.model.token_embd
            self.embedding = QuantTensor(table.name, table.qtype, table.shape, table.raw.to(self.device))
        rows = self.embedding.dequantize(tokens)
        return rows * self.model.embed_scale if self.model.embed_scale != 1.0 else rows

    def _run(self, shape: _Shape, n: int) -> torch.Tensor:
        self.last = shape
        if not self.capture:
            return self._forward(shape)[:n]
        if shape.graph is None:
            self._capture(shape)
        shape.graph.replay()
        return shape.out[:n].clone()  # the graph's buffer is overwritten by the next replay

    def _fill(self, shape: _Shape, rows: list[tuple[int, int, list[int]]]) -> None:
        page_size = self.cache.page_size
        n_keys = shape.slot_table.shape[1]
        positions = torch.tensor([pos for _, pos, _ in rows])
        pages = torch.zeros(len(rows), -(-n_keys // page_size), dtype=torch.long)  # pages past a sequence's end: 0, hidden
        for i, (_, _, seq_pages) in enumerate(rows):
            used = seq_pages[: pages.shape[1]]
            pages[i, : len(used)] = torch.tensor(used, dtype=torch.long)
        slots = (pages[:, :, None] * page_size + torch.arange(page_size)).reshape(len(rows), -1)[:, :n_keys]
        shape.x.copy_(self.model.embed(torch.tensor([token for token, _, _ in rows])))
        shape.positions.copy_(positions)
        shape.write_slots.copy_(slots[torch.arange(len(rows)), positions])
        shape.slot_table.copy_(slots)
        shape.positions_filled = positions.tolist()
        shape.pages_filled = [min(len(seq_pages), pages.shape[1]) for _, _, seq_pages in rows]
        for (rope_id, _), (cos, sin) in shape.trig.items():
            c, s = self.ropes[rope_id].cos_sin(positions)
            cos.copy_(c)
            sin.copy_(s)

    def _forward(self, shape: _Shape) -> torch.Tensor:
        """The decode forward over the static buffers (what the graph holds): stores the new K/V, returns logits."""
        cache = self.cache

        def attend(spec, q, k, v):
            kc, vc = cache.k[spec.index], cache.v[spec.index]
            if q.is_cuda:  # the same contract in two kernels (store, attention) instead of ~16
                from kamado.kernels.triton import attention, ops

                ops.store_kv(k, v, kc, vc, shape.write_slots)
                return attention.decode_attention(q, kc, vc, shape.slot_table, shape.positions, spec.scale, spec.window, spec.softcap)
            kc.index_copy_(0, shape.write_slots, k.to(kc.dtype))
            vc.index_copy_(0, shape.write_slots, v.to(vc.dtype))
            return paged_attention(q, kc, vc, shape.slot_table, shape.positions, spec.scale, spec.window, spec.softcap)

        hidden = self.model.hidden(None, shape.positions, attend, trig=dict(shape.trig), x=shape.x)
        return self.model.logits(hidden)

    def _capture(self, shape: _Shape) -> None:
        # Warm-up outside the graph (compiles the Triton kernels, initialises cuBLAS); it stores the same K/V the replay stores.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._forward(shape)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            shape.out = self._forward(shape)
        self.pool = graph.pool()
        shape.graph = graph
