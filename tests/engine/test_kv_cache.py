import pytest

from kamado.engine import CacheFullError, PagedKVCache


def cache(pages=4, page_size=4):
    return PagedKVCache(n_layer=1, n_head_kv=1, head_dim=2, head_dim_v=2, n_tokens=pages * page_size, page_size=page_size)


def test_budget_is_enforced_and_release_returns_pages():
    c = cache()
    pages = c.allocate(4)
    with pytest.raises(CacheFullError, match="1 pages needed, 0 available"):
        c.allocate(1)
    c.release(pages)
    assert c.available() == 4


def test_registered_prefix_is_matched_and_evicted_last_used_first():
    c = cache()
    tokens = list(range(10))
    pages = c.allocate(2)
    key = b""
    for i, page in enumerate(pages):
        key = c.chain(key, tokens[i * 4 : (i + 1) * 4])
        c.register(page, key)
    c.release(pages)
    assert c.available() == 4  # cached pages still count as available
    matched, _ = c.match_prefix(tokens, limit=9)
    assert matched == pages
    c.release(matched)
    other, _ = c.match_prefix([0, 1, 2, 9, 4, 5, 6, 7], limit=8)
    assert other == []
    c.allocate(3)  # two free pages, then evicts the least recently released cached page
    assert c.match_prefix(tokens, limit=9)[0] == []
