"""llama.cpp's sampler chain on torch float32 logits, one `Sampler` per sequence.

The chain and its order are llama.cpp's defaults (common/sampling.cpp, src/llama-sampling.cpp):

    logit_bias -> penalties -> DRY -> top_n_sigma -> top_k -> typical_p -> top_p -> min_p -> XTC
    -> temperature -> dist

Every stage follows llama.cpp's definition; where llama.cpp works on a sorted or truncated
candidate list we do the same with vectorised torch ops, so a vocab of 262144 costs one top-k
instead of a full sort whenever top_k is on.  Temperature is applied late, as in llama.cpp: top_p,
min_p and typical_p see the untempered logits.  Temperature <= 0 keeps only the best remaining
candidate (greedy).

Randomness comes from a private CPU `torch.Generator` per Sampler, so the same seed and the same
sequence of logits give the same tokens whatever else runs in the process or the batch.  The
numbers differ from llama.cpp's std::mt19937 stream: same seed, different (equally valid) draws.

Logprobs are those of the raw logits (log-softmax before any stage), as llama-server's `n_probs`
reports them by default; `Sampler.distribution` gives what the chain leaves (its `post_sampling_probs`).
DRY sequence breakers are token-id sequences; `dry_breakers_from_text` builds them from strings.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# llama.cpp's top-p first tries the best 256 candidates when the list is large and unsorted, and
# sorts everything only if they do not reach p; we add a middle try before the full sort (same result).
_TOP_P_TRIES = (256, 8192)
_TOP_P_SORT_ALL_BELOW = 1024
# `_largest` splits a long vector into blocks of this many values (see there).
_BLOCK = 128


@dataclass
class SamplingParams:
    """Sampling settings with llama.cpp's defaults (common/common.h)."""

    temperature: float = 0.8  # <= 0 means greedy
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    typical_p: float = 1.0  # >= 1: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # 0: off, -1: the whole history
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit; -inf bans it
    seed: int | None = None  # None -> random seed
    n_probs: int = 0  # how many top logprobs to report per step
    min_keep: int = 0  # top_p / min_p / typical_p / XTC keep at least this many candidates
    top_n_sigma: float = -1.0  # <= 0: off; else keep logits >= max - n * std
    xtc_probability: float = 0.0  # 0: off; chance of applying XTC at a step
    xtc_threshold: float = 0.1  # > 0.5: off
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1  # 0: off, -1: the whole history
    # DRY sequence breakers as token-id sequences (head token first); see `dry_breakers_from_text`
    # to build them from llama.cpp's default breaker strings.
    dry_sequence_breakers: Sequence[Sequence[int]] = field(default_factory=list)


@dataclass
class SampledToken:
    id: int
    logprob: float  # log-softmax of the raw logits at `id`
    top: list[tuple[int, float]]  # n_probs best (id, logprob) of the raw logits, best first


class SamplingError(ValueError):
    """Invalid sampling parameters or inputs."""


@dataclass
class _Candidates:
    """The candidate list a stage works on, like llama.cpp's llama_token_data_array.

    `ids` None means the full vocabulary in id order (saves materialising an arange of the vocab).
    """

    logits: torch.Tensor
    ids: torch.Tensor | None = None
    sorted: bool = False  # descending by logit

    def __len__(self) -> int:
        return self.logits.numel()

    def keep(self, index: torch.Tensor, *, sorted: bool) -> None:
        """Keep the candidates at `index` (positions, or a bool mask), in that order."""
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        self.logits = self.logits[index]
        self.ids = index if self.ids is None else self.ids[index]
        self.sorted = sorted

    def keep_first(self, n: int) -> None:
        """Truncate to the first n (keeps sortedness)."""
        if n < len(self):
            self.logits = self.logits[:n]
            self.ids = torch.arange(n) if self.ids is None else self.ids[:n]

    def sort(self) -> None:
        if not self.sorted:
            self.logits, order = torch.sort(self.logits, descending=True, stable=True)
            self.ids = order if self.ids is None else self.ids[order]
            self.sorted = True

    def id_at(self, position: int) -> int:
        return position if self.ids is None else int(self.ids[position])


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=0)


def _largest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(values, k) over the last dim (sorted, descending) of one row or of rows (n, vocab), about 10x faster
    for a small k on a whole vocabulary.

    The k largest values all lie in the k blocks of _BLOCK values with the largest block maxima (a value outside those
    blocks has k block maxima above it), so only those blocks, plus the tail that does not fill a block, are ranked.
    Each row is ranked by itself: a row gives the same result alone and among others.
    """
    n = values.shape[-1]
    n_blocks = n // _BLOCK
    if k * _BLOCK * 2 > n:
        return torch.topk(values, k)
    lead = values.shape[:-1]
    blocks = values[..., : n_blocks * _BLOCK].reshape(*lead, n_blocks, _BLOCK)
    _, best = torch.topk(blocks.amax(dim=-1), k)
    pool = torch.gather(blocks, -2, best.unsqueeze(-1).expand(*lead, k, _BLOCK)).reshape(*lead, k * _BLOCK)
    pool_ids = (best.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=values.device)).reshape(*lead, k * _BLOCK)
    if n_blocks * _BLOCK < n:
        pool = torch.cat([pool, values[..., n_blocks * _BLOCK :]], dim=-1)
        pool_ids = torch.cat([pool_ids, torch.arange(n_blocks * _BLOCK, n, device=values.device).expand(*lead, -1)], dim=-1)
    top_values, order = torch.topk(pool, k)
    return top_values, torch.gather(pool_ids, -1, order)


class Sampler:
    """One per sequence; owns its seeded RNG so results never depend on the rest of the batch."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        _validate(params, vocab_size)
        self.params = params
        self.vocab_size = vocab_size
        self.seed = params.seed if params.seed is not None else secrets.randbits(32)
        self._rng = torch.Generator(device="cpu").manual_seed(self.seed)
        # XTC has its own stream in llama.cpp too, so turning it on does not shift dist's draws.
        self._xtc_rng = torch.Generator(device="cpu").manual_seed(self.seed)
        self._bias_ids, self._bias_values = _bias_tensors(params.logit_bias)
        self._dry_breakers = _index_breakers(params.dry_sequence_breakers)

    def sample(self, logits: torch.Tensor, history: Sequence[int]) -> SampledToken:
        """Pick the next token from `logits` (float32, shape (vocab,), raw model output of one position).

        `history` is the prompt followed by the tokens generated so far (llama-server feeds the prompt
        to the penalty samplers too).
        """
        raw = self._check_logits(logits)
        cand = self._run_chain(raw, history)
        token = cand.id_at(_dist(cand.logits, self._rng))
        return self._report(raw, token)

    def distribution(self, logits: torch.Tensor, history: Sequence[int]) -> list[tuple[int, float]]:
        """The candidates left by the chain and the probability `sample` would draw each with, most likely first.

        This is what llama-server reports with `post_sampling_probs`.  It advances XTC's random stream
        (when XTC is on) exactly as `sample` does, and never the one `sample` draws tokens with.
        """
        cand = self._run_chain(self._check_logits(logits), history)
        cand.sort()
        return list(zip(cand.ids.tolist(), _softmax(cand.logits).tolist(), strict=True))

    # -- the chain ---------------------------------------------------------------------------------

    def _run_chain(self, raw: torch.Tensor, history: Sequence[int]) -> _Candidates:
        """Every stage up to and including temperature: what is left for the final random draw."""
        p = self.params
        if isinstance(history, torch.Tensor):
            history = history.tolist()
        work = self._penalised(raw, history)
        if self._argmax_only:
            # Every other stage keeps the best candidate, and greedy keeps only it: skip them.
            return _only(work, _argmax_checked(work))
        cand = _Candidates(work)
        _top_n_sigma(cand, p.top_n_sigma)
        _top_k(cand, p.top_k)
        return self._after_top_k(cand)

    def _after_top_k(self, cand: _Candidates) -> _Candidates:
        p = self.params
        _typical(cand, p.typical_p, p.min_keep)
        _top_p(cand, p.top_p, p.min_keep)
        _min_p(cand, p.min_p, p.min_keep)
        _xtc(cand, p.xtc_probability, p.xtc_threshold, p.min_keep, self._xtc_rng)
        if p.temperature <= 0:
            return _only(cand.logits, _argmax_checked(cand.logits), cand.ids)
        cand.logits = cand.logits / p.temperature
        return cand

    @property
    def _penalties_on(self) -> bool:
        p = self.params
        return p.repeat_last_n != 0 and (p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)

    @property
    def _dry_on(self) -> bool:
        p = self.params
        return p.dry_multiplier != 0.0 and p.dry_base >= 1.0 and p.dry_penalty_last_n != 0

    @property
    def _argmax_only(self) -> bool:
        """Greedy with no stage that could drop the best candidate: the chain's result is the argmax of its input."""
        p = self.params
        return p.temperature <= 0 and p.typical_p >= 1 and p.xtc_probability <= 0

    @property
    def _raw_logits_kept(self) -> bool:
        """No logit_bias, penalties or DRY: the chain starts from the raw logits."""
        return self._bias_ids is None and not self._penalties_on and not self._dry_on

    @property
    def top_k_decides(self) -> bool:
        """The row's `top_k` best logits decide the token (top_k on, and nothing before it shifts or drops a logit; not
        greedy): `sample_top` then gives what `sample` would, from those candidates alone."""
        return self.params.top_k > 0 and not self.is_greedy and self.params.top_n_sigma <= 0 and self._raw_logits_kept

    def sample_top(self, values: torch.Tensor, ids: torch.Tensor, log_norm: float) -> SampledToken:
        """`sample` for a sampler whose `top_k_decides`, given the row's best logits (descending, at least
        max(top_k, n_probs) of them), their ids and the logsumexp of the whole row."""
        k = min(self.params.top_k, self.vocab_size)
        cand = self._after_top_k(_Candidates(values[:k].clone(), ids[:k].clone(), sorted=True))
        token = cand.id_at(_dist(cand.logits, self._rng))
        position = int((ids[:k] == token).nonzero()[0, 0])
        n = min(self.params.n_probs, self.vocab_size)
        top = list(zip(ids[:n].tolist(), (values[:n] - log_norm).tolist(), strict=True))
        return SampledToken(token, float(values[position] - log_norm), top)

    @property
    def is_greedy(self) -> bool:
        """The chain keeps the raw logits' argmax and nothing else (no bias, penalties, DRY, typical_p or XTC), so
        `pick_rows` gives what `sample` would, wherever the logits are."""
        return self._argmax_only and self._raw_logits_kept

    def _penalised(self, raw: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """logit_bias, repetition penalties and DRY: the stages that shift single logits of the whole vocab.

        Works on a copy when any of them is on: `raw` may be the engine's logits buffer.
        """
        p = self.params
        penalties_on, dry_on = self._penalties_on, self._dry_on
        history_used = len(history) > 0 and (penalties_on or dry_on)
        if self._bias_ids is None and not history_used:
            return raw
        work = raw.clone()
        if self._bias_ids is not None:
            work.index_add_(0, self._bias_ids, self._bias_values)
        if penalties_on and len(history) > 0:
            self._apply_penalties(work, history)
        if dry_on and len(history) > 0:
            tail = _tail(history, p.dry_penalty_last_n)
            penalties = _dry_penalties(tail, self._dry_breakers, p.dry_multiplier, p.dry_base, p.dry_allowed_length)
            if penalties:
                work.index_add_(0, self._token_ids(list(penalties)), -torch.tensor(list(penalties.values()), dtype=torch.float32))
        return work

    def _apply_penalties(self, work: torch.Tensor, history: Sequence[int]) -> None:
        p = self.params
        ids, counts = torch.unique(self._token_ids(_tail(history, p.repeat_last_n)), return_counts=True)
        values = work[ids]
        # llama.cpp: the repeat penalty divides positive logits and multiplies the others, so it always
        # makes a seen token less likely; frequency scales with the count, presence applies once.
        values = torch.where(values <= 0, values * p.repeat_penalty, values / p.repeat_penalty)
        values = values - (counts.to(torch.float32) * p.frequency_penalty + p.presence_penalty)
        work[ids] = values

    # -- inputs and outputs ------------------------------------------------------------------------

    def _token_ids(self, tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(tokens, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = next(int(t) for t in ids.tolist() if not 0 <= t < self.vocab_size)
            raise SamplingError(f"history holds token id {bad}, outside the vocabulary of {self.vocab_size}")
        return ids

    def _check_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):
            raise SamplingError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if logits.dim() != 1 or logits.numel() != self.vocab_size:
            raise SamplingError(f"logits must have shape ({self.vocab_size},), got {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise SamplingError(f"logits must be floating point, got {logits.dtype}")
        return logits.to(device="cpu", dtype=torch.float32)

    def _report(self, raw: torch.Tensor, token: int) -> SampledToken:
        log_norm = torch.logsumexp(raw, dim=0)
        top: list[tuple[int, float]] = []
        if self.params.n_probs > 0:
            values, ids = _largest(raw, min(self.params.n_probs, self.vocab_size))
            top = list(zip(ids.tolist(), (values - log_norm).tolist(), strict=True))
        return SampledToken(id=token, logprob=float(raw[token] - log_norm), top=top)


def pick_rows(logits: torch.Tensor, samplers: list[Sampler]) -> list[SampledToken] | None:
    """What each sampler's `sample` returns for its row of `logits` (rows, vocab), for samplers that are `is_greedy` or
    whose `top_k_decides`: the best logits and the logsumexp of all rows are taken at once, where the logits are,
    with one copy to the host.

    Why: for a GPU decode step, copying every row's logits to the host and ranking them there took longer than the
    step itself (docs/GPU.md). On the CPU, ranking 8 rows of Gemma 3's 262144 logits at once took 0.49 ms against
    0.76 ms one row at a time (the whole 8-row pick 2.4 ms against 2.8-3.2 ms through `sample`, same results bit
    for bit); on an H200 `_largest` equals torch.topk and took 171 µs against 275 for 64 rows of 262149. None when
    some row's best logit is NaN or -inf: `sample` then names the problem.
    """
    ranked, ids = rank_rows(logits, samplers)
    return picks_from(ranked.cpu(), ids.cpu(), samplers)  # one transfer of each


def rank_rows(logits: torch.Tensor, samplers: list[Sampler]) -> tuple[torch.Tensor, torch.Tensor]:
    """pick_rows' work where the logits are: each row's best logits with the row's logsumexp appended (rows, k + 1),
    and their ids (rows, k), best first."""
    k = max(max(s.params.n_probs, s.params.top_k if s.top_k_decides else 1, 1) for s in samplers)
    values, ids = _largest(logits.float(), min(k, logits.shape[-1]))
    # Row by row, so that a row's sum runs as it does alone (a whole-batch call sums each row in one thread, a lone row
    # is split over the threads: the last bit differed in ~2% of Gemma-sized rows), and logsumexp's temporary of its
    # input's size is one row's (8 rows of Gemma 3's 262144 logits at once held 8 MiB beside the logits).
    log_norm = torch.stack([torch.logsumexp(row.float(), dim=-1, keepdim=True) for row in logits])
    return torch.cat([values, log_norm], dim=-1), ids


def picks_from(ranked: torch.Tensor, ids: torch.Tensor, samplers: list[Sampler]) -> list[SampledToken] | None:
    """pick_rows' result from rank_rows' tensors, on the host."""
    out = []
    for row_values, row_ids, sampler in zip(ranked, ids, samplers, strict=True):
        row_values, norm = row_values[:-1], float(row_values[-1])
        if not math.isfinite(float(row_values[0]) - norm):
            return None
        if sampler.top_k_decides:
            out.append(sampler.sample_top(row_values, row_ids, norm))
            continue
        n = min(sampler.params.n_probs, sampler.vocab_size)
        logprobs = (row_values - norm).tolist()
        out.append(SampledToken(int(row_ids[0]), logprobs[0], list(zip(row_ids[:n].tolist(), logprobs[:n], strict=True))))
    return out


# -- stages on a candidate list (each a no-op when its setting turns it off) ---------------------------


def _top_n_sigma(cand: _Candidates, n: float) -> None:
    if n <= 0 or len(cand) <= 1:
        return
    finite = cand.logits[cand.logits != -math.inf]
    if finite.numel() == 0:
        return
    std = finite.std(correction=0)
    cand.keep(cand.logits >= finite.max() - n * std, sorted=cand.sorted)


def _top_k(cand: _Candidates, k: int) -> None:
    if k <= 0:
        return
    k = min(k, len(cand))
    if cand.sorted:
        cand.keep_first(k)
        return
    _, order = _largest(cand.logits, k)
    cand.keep(order, sorted=True)


def _typical(cand: _Candidates, p: float, min_keep: int) -> None:
    if p >= 1:
        return
    cand.sort()
    probs = _softmax(cand.logits)
    # 0 * log 0 counts as 0 (llama.cpp would get NaN from a probability that underflowed to 0).
    neg_log = -torch.log(probs)
    entropy = torch.where(probs > 0, probs * neg_log, torch.zeros_like(probs)).sum()
    order = torch.argsort((neg_log - entropy).abs(), stable=True)
    cumulative = torch.cumsum(probs[order], dim=0)
    positions = torch.arange(len(cand))
    reached = (cumulative > p) & (positions >= min_keep - 1)
    last = int(reached.int().argmax()) + 1 if bool(reached.any()) else len(cand)
    cand.keep(order[:last], sorted=False)


def _top_p(cand: _Candidates, p: float, min_keep: int) -> None:
    if p >= 1:
        return
    probs = _softmax(cand.logits)
    if not cand.sorted and len(cand) > _TOP_P_SORT_ALL_BELOW:
        for tried in _TOP_P_TRIES:
            if tried >= len(cand):
                break
            _, order = _largest(cand.logits, tried)
            last = _first_reaching(torch.cumsum(probs[order], dim=0), p, min_keep)
            if last is not None:
                cand.keep(order[:last], sorted=True)
                return
    if not cand.sorted:
        cand.sort()
        probs = _softmax(cand.logits)
    last = _first_reaching(torch.cumsum(probs, dim=0), p, min_keep)
    cand.keep_first(last if last is not None else len(cand))


def _first_reaching(cumulative: torch.Tensor, p: float, min_keep: int) -> int | None:
    """How many of the leading candidates top-p keeps: up to the first whose cumulative sum is >= p."""
    reached = (cumulative >= p) & (torch.arange(1, cumulative.numel() + 1) >= min_keep)
    return int(reached.int().argmax()) + 1 if bool(reached.any()) else None


def _min_p(cand: _Candidates, p: float, min_keep: int) -> None:
    if p <= 0 or len(cand) == 0:
        return
    # p_i >= p * p_max  <=>  logit_i >= max_logit + log(p), computed in float32 as llama.cpp does.
    threshold = cand.logits.max() + torch.tensor(p, dtype=torch.float32).log()
    passing = cand.logits >= threshold
    n_passing = int(passing.sum())
    if not cand.sorted and 0 < n_passing and n_passing >= min_keep:
        cand.keep(passing, sorted=False)
        return
    cand.sort()
    cand.keep_first(min(len(cand), max(1, n_passing, min_keep)))


def _xtc(cand: _Candidates, probability: float, threshold: float, min_keep: int, rng: torch.Generator) -> None:
    """Exclude Top Choices: with some chance, drop every candidate above the threshold but the least likely of them."""
    if probability <= 0 or threshold > 0.5 or len(cand) < 2:
        return
    if float(torch.rand((), generator=rng)) > probability:
        return
    cand.sort()
    n_above = int((_softmax(cand.logits) >= threshold).sum())
    drop = max(n_above - 1, 0)
    if drop > 0 and len(cand) - drop >= min_keep:
        cand.keep(torch.arange(drop, len(cand)), sorted=True)


def _dist(logits: torch.Tensor, rng: torch.Generator) -> int:
    """Draw a candidate position from softmax(logits) by inverse CDF, like llama.cpp's dist sampler."""
    if logits.numel() == 1:
        return 0
    weights = torch.exp(logits - logits.max()).double()
    cumulative = torch.cumsum(weights, dim=0)
    total = cumulative[-1]
    if not bool(torch.isfinite(total)) or float(total) <= 0:
        raise SamplingError("no token can be sampled: the remaining logits are all -inf, or hold NaN or +inf")
    target = torch.rand((), generator=rng, dtype=torch.float64) * total
    return min(int(torch.searchsorted(cumulative, target)), logits.numel() - 1)


def _only(logits: torch.Tensor, position: int, ids: torch.Tensor | None = None) -> _Candidates:
    """A one-candidate list holding logits[position] (greedy's outcome)."""
    index = torch.tensor([position])
    return _Candidates(logits[index], index if ids is None else ids[index], sorted=True)


def _argmax_checked(logits: torch.Tensor) -> int:
    values, ids = _largest(logits, 1)
    best, value = int(ids[0]), float(values[0])
    if math.isnan(value) or value == -math.inf:
        raise SamplingError("no token can be chosen: every logit is -inf or NaN (all tokens banned?)")
    return best


# -- DRY ("don't repeat yourself", from koboldcpp via llama.cpp) ---------------------------------------


def _dry_penalties(
    tokens: Sequence[int], breakers: dict[int, list[tuple[int, ...]]], multiplier: float, base: float, allowed_length: int
) -> dict[int, float]:
    """Penalty per token id that would extend a repeat of the context's ending, as llama.cpp's DRY computes it."""
    tokens = list(tokens)
    n = len(tokens)
    if n <= allowed_length:
        return {}
    rev = tokens[::-1]  # rev[i] is the i-th token from the end, like llama.cpp's ring_buffer.rat(i)

    # A sequence breaker caps how far back a repeat may reach.
    rep_limit = n
    for i, token in enumerate(rev):
        tails = breakers.get(token)
        if not tails:
            continue
        longest = -1
        for tail in tails:
            if longest < len(tail) <= i and all(tail[k] == rev[i - k - 1] for k in range(len(tail))):
                longest = len(tail)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < allowed_length:
        return {}

    # Z-algorithm over the reversed context: z[k] = length of the common prefix of rev and rev[k:],
    # i.e. how many tokens before position n-1-k repeat the context's ending.
    z = [0] * n
    left = right = 0
    for k in range(1, n):
        length = min(z[k - left], right - k + 1) if k <= right else 0
        while k + length < n and rev[length] == rev[k + length]:
            length += 1
        z[k] = length
        if length and k + length - 1 > right:
            left, right = k, k + length - 1

    # The token that followed each earlier copy of the ending would extend the repeat.
    longest_repeat: dict[int, int] = {}
    for k in range(1, n):
        repeat_len = min(z[k], rep_limit)
        if repeat_len >= allowed_length:
            following = rev[k - 1]
            if longest_repeat.get(following, -1) < repeat_len:
                longest_repeat[following] = repeat_len

    max_exponent = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    penalties = {}
    for token, repeat_len in longest_repeat.items():
        if () in breakers.get(token, ()):
            continue  # a single-token breaker is never penalised
        exponent = repeat_len - allowed_length
        if max_exponent > 0:
            exponent = min(exponent, max_exponent)
        penalties[token] = multiplier * base**exponent
    return penalties


# llama.cpp's limits on DRY breakers: longer strings are cut, and tails are capped to keep the scan linear.
_DRY_BREAKER_MAX_CHARS = 40
_DRY_BREAKER_MAX_TAIL = 20
DEFAULT_DRY_BREAKERS = ("\n", ":", '"', "*")


def dry_breakers_from_text(
    breakers: Sequence[str], token_pieces: Sequence[bytes], tokenize: Callable[[str], Sequence[int]]
) -> list[list[int]]:
    """Token-id sequences for DRY sequence-breaker strings, as llama.cpp's get_overlapping_token_sequences builds them.

    A token whose text contains a breaker breaks on its own; a token whose text ends with the start of a
    breaker breaks when followed by the tokenization of the breaker's rest.  `token_pieces[i]` is the
    text of token i (special tokens rendered); `tokenize` turns text into ids without BOS/EOS.  This scans
    the whole vocabulary, so build it once per model and breaker set.
    """
    sequences: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for breaker_text in breakers:
        breaker = breaker_text.encode("utf-8")[:_DRY_BREAKER_MAX_CHARS]
        if not breaker:
            continue
        for token, piece in enumerate(token_pieces):
            if breaker in piece:
                sequences.append([token])
                continue
            start = piece.find(breaker[:1])
            while start >= 0:
                overlap = len(piece) - start
                if breaker.startswith(piece[start:]):
                    rest = breaker[overlap:].decode("utf-8", errors="replace")
                    sequence = (token, *list(tokenize(rest))[:_DRY_BREAKER_MAX_TAIL])
                    if sequence not in seen:
                        seen.add(sequence)
                        sequences.append(list(sequence))
                start = piece.find(breaker[:1], start + 1)
    return sequences


def _index_breakers(sequences: Sequence[Sequence[int]]) -> dict[int, list[tuple[int, ...]]]:
    """Head token -> tails, the shape llama.cpp's DRY looks breakers up in."""
    index: dict[int, list[tuple[int, ...]]] = {}
    for seq in sequences:
        if len(seq) == 0:
            raise SamplingError("dry_sequence_breakers holds an empty sequence")
        tail = tuple(int(t) for t in seq[1:])
        if tail not in index.setdefault(int(seq[0]), []):
            index[int(seq[0])].append(tail)
    return index


# -- helpers ------------------------------------------------------------------------------------------


def _tail(history: Sequence[int], last_n: int) -> Sequence[int]:
    return history if last_n < 0 else history[len(history) - min(last_n, len(history)):]


def _bias_tensors(logit_bias: dict[int, float] | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not logit_bias:
        return None, None
    ids = torch.tensor([int(t) for t in logit_bias], dtype=torch.long)
    values = torch.tensor([float(b) for b in logit_bias.values()], dtype=torch.float32)
    return ids, values


def _validate(params: SamplingParams, vocab_size: int) -> None:
    if vocab_size <= 0:
        raise SamplingError(f"vocab_size must be positive, got {vocab_size}")
    for name in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty", "presence_penalty",
                 "top_n_sigma", "xtc_probability", "xtc_threshold", "dry_multiplier", "dry_base"):
        value = getattr(params, name)
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise SamplingError(f"sampling parameter {name} must be a number, got {value!r}")
    for name in ("top_k", "repeat_last_n", "n_probs", "min_keep", "dry_allowed_length", "dry_penalty_last_n"):
        if not isinstance(getattr(params, name), int):
            raise SamplingError(f"sampling parameter {name} must be an integer, got {getattr(params, name)!r}")
    for name in ("repeat_last_n", "dry_penalty_last_n"):
        if getattr(params, name) < -1:
            raise SamplingError(f"sampling parameter {name} must be -1 (whole history), 0 (off) or positive, got {getattr(params, name)}")
    if params.n_probs < 0:
        raise SamplingError(f"sampling parameter n_probs must be >= 0, got {params.n_probs}")
    if params.seed is not None and not 0 <= params.seed < 2**64:
        raise SamplingError(f"sampling parameter seed must be in [0, 2**64), got {params.seed}")
    for token, bias in (params.logit_bias or {}).items():
        if not isinstance(token, int) or not 0 <= token < vocab_size:
            raise SamplingError(f"logit_bias names token {token!r}; keys must be int token ids in [0, {vocab_size})")
        if not isinstance(bias, (int, float)) or math.isnan(bias):
            raise SamplingError(f"logit_bias for token {token} must be a number, got {bias!r}")
