"""A loaded model keeps none of its file's pages mapped: the kernels hold repacked copies, and embedding lookups
read their rows without leaving the table resident (kamado/models/decoder.py, kamado.kernels.embedding_rows)."""

import struct
import sys

import numpy as np
import pytest
import torch

from kamado.gguf import GGUFReader
from kamado.models import load_model, solo_attend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/pagemap")


def mapped_pages(reader: GGUFReader) -> int:
    """Pages of the reader's file mapping present in this process's page table."""
    view = np.frombuffer(reader.shards[0].mm, np.uint8)
    first, last = view.ctypes.data // 4096, -(-(view.ctypes.data + view.size) // 4096)
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(first * 8)
        entries = pagemap.read((last - first) * 8)
    return sum(struct.unpack_from("<Q", entries, i)[0] >> 63 for i in range(0, len(entries), 8))


def test_no_file_page_stays_mapped_after_the_load_or_a_forward(reference_gguf):
    reader = GGUFReader(reference_gguf("llama-spm", "q8_0"))
    model = load_model(reader)  # the cpu backend: weights repacked, norms copied out of the file
    assert mapped_pages(reader) == 0
    tokens = torch.arange(0, model.cfg.n_vocab, 7)  # rows from all over the embedding table
    with torch.inference_mode():
        model.hidden(tokens, torch.arange(len(tokens)), solo_attend(model.cfg.n_layer))
    assert mapped_pages(reader) == 0
