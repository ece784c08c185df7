"""quantize_model's GPU path: source bytes to the device, kernels there, results streamed back to the writer.

Measured on the H100 machine (benchmarks/profile_quantize_gpu.py, Llama-3-8B-shaped F16 -> Q4_K_M, docs/GPU.md):
the kernels take ~1.3 s for the 15 GiB model, the copies took the rest. `torch.from_numpy(mmap rows).to("cuda")`
moved 5 GiB/s and `.cpu()` of the results 1 GiB/s: pageable memory makes the driver stage every copy, and each
fresh host array is page-faulted in. So the source is read from the mmap by several threads at once into pinned
chunk buffers and sent on a copy stream while the next chunk is read; results stay on the device until the writer
asks for them and come back through two pinned buffers, a chunk being written while the next one copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

CHUNK_BYTES = 64 << 20
READ_THREADS = 8  # page faults on the mmap'd source are the cost of reading it: several threads take them in parallel
_SLOTS = 2  # chunk buffers per direction: one being filled or drained while the other copies


class _Slot:
    """A pinned chunk buffer and the event of the last copy that used it."""

    def __init__(self):
        self.tensor = torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=True)
        self.array = self.tensor.numpy()
        self.event: torch.cuda.Event | None = None

    def record(self, stream: torch.cuda.Stream) -> None:
        self.event = torch.cuda.Event()
        self.event.record(stream)

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class DeviceCopies:
    """Host-to-device uploads (one thread at a time) and device-to-host downloads (another thread) through pinned chunks.

    On a device other than CUDA (the CPU, in tests) the same calls make plain copies.
    """

    def __init__(self, device: str):
        self.device = torch.device(device)
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="kamado-read")
        if self.device.type != "cuda":
            return
        self._upload_stream = torch.cuda.Stream(self.device)
        self._download_stream = torch.cuda.Stream(self.device)
        self._up = [_Slot() for _ in range(_SLOTS)]
        self._down = [_Slot() for _ in range(_SLOTS)]

    def close(self) -> None:
        self._readers.shutdown(wait=True)

    def upload(self, rows: np.ndarray) -> torch.Tensor:
        """rows (uint8, C-contiguous, e.g. a read-only mmap view) as a device tensor of the same shape.

        The copy is ordered before later work on the calling thread's current stream.
        """
        flat = rows.reshape(-1)
        out = torch.empty(flat.size, dtype=torch.uint8, device=self.device)
        if self.device.type != "cuda":
            self._read(flat, out.numpy())
            return out.view(rows.shape)
        for k, a in enumerate(range(0, flat.size, CHUNK_BYTES)):
            b = min(a + CHUNK_BYTES, flat.size)
            slot = self._up[k % _SLOTS]
            slot.wait()
            self._read(flat[a:b], slot.array[: b - a])
            with torch.cuda.stream(self._upload_stream):
                out[a:b].copy_(slot.tensor[: b - a], non_blocking=True)
                slot.record(self._upload_stream)
        torch.cuda.current_stream(self.device).wait_stream(self._upload_stream)
        return out.view(rows.shape)

    def download(self, result: torch.Tensor) -> Iterator[np.ndarray]:
        """The bytes of `result` in chunks, each valid until the next is asked for.

        Call it on the thread that computed `result`, right after (its stream marks the result complete);
        iterate it on any thread.
        """
        flat = result.reshape(-1).view(torch.uint8)
        spans = [(a, min(a + CHUNK_BYTES, flat.numel())) for a in range(0, flat.numel(), CHUNK_BYTES)]
        if self.device.type != "cuda":
            return (flat[a:b].numpy() for a, b in spans)
        ready = torch.cuda.Event()
        ready.record()
        return self._download_chunks(flat, spans, ready)

    def _download_chunks(self, flat: torch.Tensor, spans: list[tuple[int, int]], ready: torch.cuda.Event) -> Iterator[np.ndarray]:
        def start(k: int) -> None:
            a, b = spans[k]
            slot = self._down[k % _SLOTS]  # its previous chunk (k - 2) has been consumed by now
            with torch.cuda.stream(self._download_stream):
                self._download_stream.wait_event(ready)
                slot.tensor[: b - a].copy_(flat[a:b], non_blocking=True)
                slot.record(self._download_stream)

        if spans:
            start(0)
        for k, (a, b) in enumerate(spans):
            if k + 1 < len(spans):
                start(k + 1)
            slot = self._down[k % _SLOTS]
            slot.wait()
            yield slot.array[: b - a]

    def _read(self, src: np.ndarray, dst: np.ndarray) -> None:
        step = -(-src.size // READ_THREADS)
        parts = [slice(a, a + step) for a in range(0, src.size, step)]
        list(self._readers.map(lambda part: np.copyto(dst[part], src[part]), parts))
