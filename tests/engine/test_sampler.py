"""The sampler chain against llama.cpp's definitions (src/llama-sampling.cpp), on small hand-made logits.

Expected values are worked out by hand (or with float64 numpy from the definitions) in the comments;
`Sampler.distribution` exposes what is left after the chain, so each stage is checked in isolation by
turning the others off.
"""

import math

import numpy as np
import pytest
import torch

from kamado.engine.sampler import Sampler, SamplingError, SamplingParams, dry_breakers_from_text

# Every stage off, temperature 1: the chain leaves softmax(logits) untouched.
OFF = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0)

PROBS = [0.5, 0.3, 0.15, 0.05]
LOGITS = torch.tensor([math.log(p) for p in PROBS], dtype=torch.float32)


def dist_of(logits, history=(), **params):
    sampler = Sampler(SamplingParams(**{**OFF, "seed": 0, **params}), logits.numel())
    return dict(sampler.distribution(logits, list(history)))


def assert_dist(actual: dict, expected: dict, tol=1e-5):
    assert set(actual) == set(expected)
    for token, prob in expected.items():
        assert actual[token] == pytest.approx(prob, abs=tol), token


def softmax(values):
    e = np.exp(np.asarray(values, dtype=np.float64) - max(values))
    return e / e.sum()


def test_everything_off_leaves_softmax():
    assert_dist(dist_of(LOGITS), dict(enumerate(PROBS)))


def test_top_k_keeps_the_k_best():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    # k=2 keeps ids 1 and 3: softmax([5, 4]) = [e/(e+1), 1/(e+1)]
    e = math.e
    assert_dist(dist_of(logits, top_k=2), {1: e / (e + 1), 3: 1 / (e + 1)})
    assert set(dist_of(logits, top_k=10)) == {0, 1, 2, 3, 4}  # k > vocab: all kept


def test_top_k_on_a_large_vocab_is_torch_topk():
    generator = torch.Generator().manual_seed(3)
    for vocab in (151936, 262144, 1000):  # 151936 is not a multiple of the row split
        logits = torch.randn(vocab, generator=generator) * 4
        kept = dist_of(logits, top_k=40)
        assert set(kept) == set(torch.topk(logits, 40).indices.tolist())


def test_top_p():
    # cumulative 0.5, 0.8, 0.95, 1.0: p=0.75 stops at the 2nd token, p=0.85 at the 3rd, p=0.4 at the 1st
    assert_dist(dist_of(LOGITS, top_p=0.75), {0: 0.5 / 0.8, 1: 0.3 / 0.8})
    assert_dist(dist_of(LOGITS, top_p=0.85), {0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95})
    assert_dist(dist_of(LOGITS, top_p=0.4), {0: 1.0})
    # min_keep overrides an early stop
    assert set(dist_of(LOGITS, top_p=0.4, min_keep=3)) == {0, 1, 2}


def test_top_p_and_typical_p_boundaries():
    # four equal logits: probabilities exactly 0.25, cumulative exactly 0.25, 0.5, 0.75, 1.0.
    # top-p stops once the sum is >= p, typical-p once it is > p (llama.cpp's comparisons).
    logits = torch.zeros(4)
    assert len(dist_of(logits, top_p=0.5)) == 2
    assert len(dist_of(logits, typical_p=0.5)) == 3


@pytest.mark.parametrize("vocab, top_p", [(3000, 0.5), (20000, 0.1), (20000, 0.95)])
def test_top_p_on_a_large_unsorted_vocab(vocab, top_p):
    # One token at logit 5, the rest at 0 and interleaved with it, so the candidates are large and unsorted:
    # top-p keeps the big one plus as many small ones as reach p (computed in float64 here).
    logits = torch.zeros(vocab)
    logits[vocab // 2] = 5.0
    big, small = softmax([5.0, 0.0] + [0.0] * (vocab - 2))[:2]
    n_small = math.ceil((top_p - big) / small)
    assert (top_p - big) / small % 1 > 0.05  # not on a rounding boundary
    kept = dist_of(logits, top_p=top_p)
    assert len(kept) == 1 + n_small
    assert vocab // 2 in kept


def test_min_p():
    # threshold 0.2 * 0.5 = 0.1: drops only the 0.05 token
    assert_dist(dist_of(LOGITS, min_p=0.2), {0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95})
    # threshold 0.7 * 0.5 = 0.35: only the best, unless min_keep asks for more
    assert_dist(dist_of(LOGITS, min_p=0.7), {0: 1.0})
    assert set(dist_of(LOGITS, min_p=0.7, min_keep=2)) == {0, 1}


def test_typical_p():
    # H = -sum p ln p = 1.14212; |-ln p - H| = 0.449 (0.5), 0.062 (0.3), 0.755 (0.15), 1.854 (0.05)
    # so the order is 0.3, 0.5, 0.15, 0.05 with cumulative 0.3, 0.8, 0.95, 1.0, kept while the sum is not > p.
    assert_dist(dist_of(LOGITS, typical_p=0.5), {1: 0.3 / 0.8, 0: 0.5 / 0.8})
    assert_dist(dist_of(LOGITS, typical_p=0.25), {1: 1.0})
    assert set(dist_of(LOGITS, typical_p=0.9)) == {0, 1, 2}


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert_dist(dist_of(logits, temperature=0.5), dict(enumerate(softmax([2.0, 4.0, 6.0]))))
    assert_dist(dist_of(logits, temperature=2.0), dict(enumerate(softmax([0.5, 1.0, 1.5]))))


def test_temperature_applies_after_the_filters():
    # llama.cpp runs min-p on untempered logits: with temperature 10 the 0.05 token still goes (0.05 < 0.2 * 0.5).
    kept = dist_of(LOGITS, min_p=0.2, temperature=10.0)
    assert set(kept) == {0, 1, 2}
    assert_dist(kept, dict(enumerate(softmax([math.log(p) / 10 for p in PROBS[:3]]))))


def test_greedy_is_argmax():
    generator = torch.Generator().manual_seed(0)
    for seed in range(5):
        logits = torch.randn(5000, generator=generator)
        for params in (dict(temperature=0.0), dict(temperature=-1.0, top_k=1), SamplingParams().__dict__ | dict(temperature=0.0)):
            sampler = Sampler(SamplingParams(**{**params, "seed": seed}), 5000)
            assert sampler.sample(logits, []).id == int(torch.argmax(logits))
            assert sampler.distribution(logits, []) == [(int(torch.argmax(logits)), 1.0)]


def test_greedy_after_typical_keeps_the_most_typical():
    # typical-p can drop the best token; greedy then picks the best of what is left (token 1 here).
    sampler = Sampler(SamplingParams(temperature=0.0, typical_p=0.25, top_k=0, min_p=0.0, top_p=1.0), 4)
    assert sampler.sample(LOGITS, []).id == 1


def test_temperature_near_zero_is_greedy():
    logits = torch.tensor([0.0, 1.0, 1.1, 0.5])
    sampler = Sampler(SamplingParams(**{**OFF, "temperature": 1e-4, "seed": 7}), 4)
    assert {sampler.sample(logits, []).id for _ in range(50)} == {2}


def test_default_chain_draws_with_the_right_frequencies():
    # default chain: top_k 40, top_p 0.95 keeps 0.5/0.3/0.15 (cumulative 0.95 reached), min_p 0.05 keeps them,
    # temperature 0.8 then reshapes them: p_i^(1/0.8) normalised.
    sampler = Sampler(SamplingParams(seed=123), 4)
    expected = softmax([math.log(p) / 0.8 for p in PROBS[:3]])
    counts = np.bincount([sampler.sample(LOGITS, []).id for _ in range(4000)], minlength=4)
    assert counts[3] == 0
    for token in range(3):
        assert counts[token] / 4000 == pytest.approx(expected[token], abs=0.03)


def test_same_seed_same_tokens_whatever_runs_in_between():
    generator = torch.Generator().manual_seed(1)
    steps = [torch.randn(1000, generator=generator) for _ in range(40)]

    def run(interleave: bool):
        sampler = Sampler(SamplingParams(seed=42, top_k=0, min_p=0.0, top_p=1.0, temperature=1.5), 1000)
        other = Sampler(SamplingParams(seed=42, temperature=1.5), 1000)
        tokens = []
        for logits in steps:
            if interleave:  # other work: another sequence sampling, the global RNG being reseeded and used
                other.sample(logits.flip(0), tokens)
                torch.manual_seed(0)
                torch.rand(10)
            tokens.append(sampler.sample(logits, tokens).id)
        return tokens

    alone = run(False)
    assert run(True) == alone
    different = Sampler(SamplingParams(seed=43, top_k=0, min_p=0.0, top_p=1.0, temperature=1.5), 1000)
    assert [different.sample(logits, []).id for logits in steps] != alone


def test_random_seed_when_none():
    a, b = Sampler(SamplingParams(), 10), Sampler(SamplingParams(), 10)
    assert isinstance(a.seed, int) and a.seed != b.seed


def test_repeat_frequency_presence_penalties():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    history = [0, 1, 1, 4]
    # repeat 2 divides positive logits and multiplies the others (0 counts as non-positive: stays 0);
    # then frequency 0.5 * count and presence 0.25 once:
    # 0: 2/2 - 0.5 - 0.25 = 0.25;  1: -1*2 - 1.0 - 0.25 = -3.25;  4: 0*2 - 0.5 - 0.25 = -0.75
    expected = [0.25, -3.25, 0.5, 3.0, -0.75]
    kept = dist_of(logits, history, repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    assert_dist(kept, dict(enumerate(softmax(expected))))


def test_penalty_window_is_the_last_n_tokens():
    logits = torch.tensor([2.0, 2.0, 2.0])
    only_last = dist_of(logits, [0, 1], repeat_penalty=2.0, repeat_last_n=1)  # token 1 only: logit 1
    assert_dist(only_last, dict(enumerate(softmax([2.0, 1.0, 2.0]))))
    whole = dist_of(logits, [0, 1], repeat_penalty=2.0, repeat_last_n=-1)
    assert_dist(whole, dict(enumerate(softmax([1.0, 1.0, 2.0]))))
    off = dist_of(logits, [0, 1], repeat_penalty=2.0, repeat_last_n=0)
    assert_dist(off, dict(enumerate(softmax([2.0, 2.0, 2.0]))))


def test_logit_bias_shifts_and_bans():
    logits = torch.tensor([0.0, 10.0, 9.0, 1.0])
    banned = Sampler(SamplingParams(temperature=0.0, logit_bias={1: -math.inf}), 4)
    assert banned.sample(logits, []).id == 2
    sampling = Sampler(SamplingParams(seed=5, logit_bias={1: -math.inf, 2: -math.inf}, top_k=0, min_p=0.0, top_p=1.0), 4)
    assert {sampling.sample(logits, []).id for _ in range(200)} == {0, 3}
    boosted = dist_of(logits, logit_bias={0: 12.0})
    assert_dist(boosted, dict(enumerate(softmax([12.0, 10.0, 9.0, 1.0]))))


def test_everything_banned_is_a_clear_error():
    logits = torch.tensor([1.0, 2.0])
    for temperature in (0.0, 0.8):
        sampler = Sampler(SamplingParams(temperature=temperature, logit_bias={0: -math.inf, 1: -math.inf}), 2)
        with pytest.raises(SamplingError, match="-inf"):
            sampler.sample(logits, [])


def test_logprobs_are_of_the_raw_logits():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5, -1.0])
    raw_logprobs = torch.log_softmax(logits.double(), 0)
    sampler = Sampler(SamplingParams(seed=0, n_probs=3, temperature=0.3, repeat_penalty=3.0, logit_bias={1: -math.inf}), 5)
    token = sampler.sample(logits, [2])
    assert token.id != 1
    assert token.logprob == pytest.approx(float(raw_logprobs[token.id]), abs=1e-6)
    assert [t for t, _ in token.top] == [1, 2, 0]
    for t, logprob in token.top:
        assert logprob == pytest.approx(float(raw_logprobs[t]), abs=1e-6)
    assert Sampler(SamplingParams(seed=0), 5).sample(logits, []).top == []


def test_xtc_removes_the_top_choices_but_the_last_above_threshold():
    # threshold 0.1: 0.5, 0.3, 0.15 are above; all but the least of them (0.15) go
    assert_dist(dist_of(LOGITS, xtc_probability=1.0, xtc_threshold=0.1), {2: 0.75, 3: 0.25})
    # one token above the threshold: nothing to remove
    assert set(dist_of(LOGITS, xtc_probability=1.0, xtc_threshold=0.4)) == {0, 1, 2, 3}
    # threshold above 0.5 turns XTC off
    assert set(dist_of(LOGITS, xtc_probability=1.0, xtc_threshold=0.6)) == {0, 1, 2, 3}


def test_top_n_sigma():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    # mean 3.2, population std sqrt(62.8 / 5) = 3.544; keep logits >= 10 - n * std
    assert set(dist_of(logits, top_n_sigma=1.0)) == {4}  # >= 6.456
    assert set(dist_of(logits, top_n_sigma=2.5)) == {2, 3, 4}  # >= 1.14


def test_dry_penalises_what_would_extend_a_repeat():
    # llama.cpp's own example: context a b c c b c y a b c (a=0 b=1 c=2 y=3). The ending "a b c" also
    # occurs at the start, followed by c (repeat length 3); "b c" is followed by y (2); "c" by b (1).
    # allowed_length 2 penalises c by 0.8 * 1.75^(3-2) = 1.4 and y by 0.8 * 1.75^0 = 0.8.
    context = [0, 1, 2, 2, 1, 2, 3, 0, 1, 2]
    logits = torch.zeros(5)
    kept = dist_of(logits, context, dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    assert_dist(kept, dict(enumerate(softmax([0.0, 0.0, -1.4, -0.8, 0.0]))))
    # y as a single-token breaker is never penalised; c still is (y sits 3 back, so repeats may reach 3)
    kept = dist_of(logits, context, dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=[[3]])
    assert_dist(kept, dict(enumerate(softmax([0.0, 0.0, -1.4, 0.0, 0.0]))))
    # b one token back caps repeats at 1 < allowed_length: no penalty at all
    kept = dist_of(logits, context, dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=[[1]])
    assert_dist(kept, dict(enumerate(softmax([0.0] * 5))))
    # a two-token breaker "a b" (head a, tail b) ending 2 back: it reaches from rev index 2 to 1, cap 2 - 1 = 1
    kept = dist_of(logits, context, dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=[[0, 1]])
    assert_dist(kept, dict(enumerate(softmax([0.0] * 5))))


def test_penalties_see_history_given_as_a_tensor():
    logits = torch.tensor([2.0, 2.0, 2.0])
    kept = dist_of(logits, torch.tensor([0, 1]), repeat_penalty=2.0)
    assert_dist(kept, dict(enumerate(softmax([1.0, 1.0, 2.0]))))


@pytest.mark.parametrize(
    "params, vocab, message",
    [
        (dict(logit_bias={7: 1.0}), 5, "logit_bias names token 7"),
        (dict(repeat_last_n=-2), 5, "repeat_last_n"),
        (dict(n_probs=-1), 5, "n_probs"),
        (dict(top_p=float("nan")), 5, "top_p"),
        (dict(top_k=2.5), 5, "top_k"),
        (dict(seed=-1), 5, "seed"),
        (dict(dry_multiplier=0.5, dry_sequence_breakers=[[]]), 5, "dry_sequence_breakers"),
        ({}, 0, "vocab_size"),
    ],
)
def test_bad_parameters_are_named(params, vocab, message):
    with pytest.raises(SamplingError, match=message):
        Sampler(SamplingParams(**params), vocab)


def test_bad_inputs_are_named():
    sampler = Sampler(SamplingParams(repeat_penalty=1.1), 5)
    with pytest.raises(SamplingError, match=r"shape \(5,\)"):
        sampler.sample(torch.zeros(6), [])
    with pytest.raises(SamplingError, match="floating point"):
        sampler.sample(torch.zeros(5, dtype=torch.long), [])
    with pytest.raises(SamplingError, match="token id 9"):
        sampler.sample(torch.zeros(5), [1, 9])
    with pytest.raises(SamplingError, match="token id 9"):  # DRY penalising what followed an earlier copy
        Sampler(SamplingParams(dry_multiplier=1.0, dry_allowed_length=1), 5).sample(torch.zeros(5), [1, 9, 1])
    with pytest.raises(SamplingError, match="NaN"):
        Sampler(SamplingParams(temperature=0.0), 5).sample(torch.full((5,), float("nan")), [])


def test_accepts_other_float_dtypes():
    logits = torch.tensor([0.0, 3.0, 1.0], dtype=torch.bfloat16)
    assert Sampler(SamplingParams(temperature=0.0), 3).sample(logits, []).id == 1


# llama.cpp's own expectations (tests/test-sampling.cpp): probabilities in, one stage applied, probabilities
# out. llama.cpp leaves some removed tokens in place with probability 0 and does not renormalise after
# typical/XTC, so both sides are compared as sorted non-zero probabilities, renormalised.
Q = [0.1, 0.2, 0.3, 0.4]
FIVE = [0.2] * 5
LLAMA_CPP_CASES = [
    (Q, [], dict(temperature=1.0), Q),
    (Q, [], dict(temperature=0.0), [0, 0, 0, 1]),
    (Q, [], dict(top_k=1), [1.0]),
    (Q, [], dict(top_k=3), [0.44444, 0.33333, 0.22222]),
    (Q, [], dict(top_k=4), Q),
    (Q, [], dict(top_p=0.0), [1.0]),
    (Q, [], dict(top_p=0.7), [0.571429, 0.428571]),
    (Q, [], dict(top_p=0.8), [0.44444, 0.33333, 0.22222]),
    (Q, [], dict(min_p=0.24), Q),
    (Q, [], dict(min_p=0.26), [0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
    (Q, [], dict(min_p=0.49), [0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),
    (Q, [], dict(min_p=0.51), [0.3 / 0.7, 0.4 / 0.7]),
    (Q, [], dict(min_p=0.74), [0.3 / 0.7, 0.4 / 0.7]),
    (Q, [], dict(min_p=0.76), [1.0]),
    (Q, [], dict(min_p=1.05), [1.0]),
    (Q[::-1], [], dict(xtc_probability=1.0, xtc_threshold=0.09), [0.1]),
    (Q[::-1], [], dict(xtc_probability=1.0, xtc_threshold=0.19), [0.2, 0.1]),
    (Q[::-1], [], dict(xtc_probability=1.0, xtc_threshold=0.29), [0.3, 0.2, 0.1]),
    (Q[::-1], [], dict(xtc_probability=1.0, xtc_threshold=0.39), Q),
    ([0.97, 0.01, 0.01, 0.01], [], dict(typical_p=0.5), [0.97]),
    ([0.4, 0.2, 0.2, 0.2], [], dict(typical_p=0.5), [0.2, 0.2, 0.2]),
    (FIVE, [0], dict(repeat_penalty=50.0), [0, 0.25, 0.25, 0.25, 0.25]),
    (FIVE, [0, 1, 2], dict(repeat_penalty=50.0), [0, 0, 0, 0.5, 0.5]),
    (FIVE, [0, 1, 2, 0, 0], dict(repeat_penalty=50.0), [0, 0, 0, 0.5, 0.5]),
    (FIVE, [0], dict(frequency_penalty=5.0, presence_penalty=5.0), [0.000011, 0.249997, 0.249997, 0.249997, 0.249997]),
    (FIVE, [0, 1, 2], dict(frequency_penalty=5.0, presence_penalty=5.0), [0.000023, 0.000023, 0.000023, 0.499966, 0.499966]),
    (FIVE, [0, 1, 2, 0, 0], dict(frequency_penalty=5.0, presence_penalty=5.0), [0.0, 0.000023, 0.000023, 0.499977, 0.499977]),
    ([0.25] * 4, [0, 1], dict(dry_multiplier=1.0, dry_base=1.1, dry_allowed_length=2, dry_penalty_last_n=4), [0.25] * 4),
    ([0.25] * 4, [0, 1, 2, 0, 1], dict(dry_multiplier=1.0, dry_base=1.1, dry_allowed_length=2, dry_penalty_last_n=5),
     [0.296923, 0.296923, 0.109232, 0.296923]),
    (FIVE, [0, 1, 3, 4, 0, 1], dict(dry_multiplier=1.0, dry_base=1.1, dry_allowed_length=2, dry_penalty_last_n=6,
                                    dry_sequence_breakers=[[3]]), FIVE),
    (FIVE, [0, 1, 2, 0, 1], dict(dry_multiplier=2.0, dry_base=1.1, dry_allowed_length=2, dry_penalty_last_n=5),
     [0.241818, 0.241818, 0.032727, 0.241818, 0.241818]),
    (FIVE, [0, 1, 2, 3, 4, 0, 1], dict(dry_multiplier=1.0, dry_base=1.1, dry_allowed_length=4, dry_penalty_last_n=7), FIVE),
    (Q, [], dict(top_n_sigma=1.0), [0.0, 0.0, 0.428571, 0.571429]),
    (Q, [], dict(top_n_sigma=0.0), Q),
    (Q, [], dict(top_n_sigma=3.0), Q),
]


@pytest.mark.parametrize("probs, history, params, expected", LLAMA_CPP_CASES)
def test_llama_cpp_sampling_cases(probs, history, params, expected):
    logits = torch.tensor([math.log(p) for p in probs], dtype=torch.float32)
    actual = sorted(p for p in dist_of(logits, history, **params).values() if p > 1e-6)
    expected = sorted(p for p in expected if p > 1e-6)
    total = sum(expected)
    assert actual == pytest.approx([p / total for p in expected], abs=2e-5)


def test_llama_cpp_sampler_queue_on_10000_tokens():
    # llama.cpp's queue test: logit of token i is log(i), so p_i is proportional to i (token 0 has p 0).
    vocab = 10000
    logits = torch.log(torch.arange(vocab, dtype=torch.float32))
    assert set(dist_of(logits, top_k=100)) == set(range(9900, vocab))
    # min-p keeps i >= min_p * 9999
    assert set(dist_of(logits, min_p=0.1, min_keep=1)) == set(range(1000, vocab))
    # top-p keeps the largest ids until their sum reaches p * sum(all ids)
    target, total, n_kept = 0.8 * (vocab * (vocab - 1) // 2), 0, 0
    while total < target:
        total += vocab - 1 - n_kept
        n_kept += 1
    assert set(dist_of(logits, top_p=0.8, min_keep=1)) == set(range(vocab - n_kept, vocab))
    # the whole default order k -> p -> m: top-100 first, then top-p within them, min-p keeps the rest
    target, total, n_kept = 0.8 * sum(range(9900, vocab)), 0, 0
    while total < target:
        total += vocab - 1 - n_kept
        n_kept += 1
    assert set(dist_of(logits, top_k=100, top_p=0.8, min_p=0.1, min_keep=1)) == set(range(vocab - n_kept, vocab))


def test_dry_breakers_from_text():
    pieces = [b"a", b"b", b"xa", b"ab", b"\n", b"q\n", b"z"]
    vocab = {b"a": 0, b"b": 1}

    def tokenize(text):
        return [vocab[ch.encode()] for ch in text]

    # "ab": tokens holding it break alone; tokens ending in "a" break when "b" follows
    assert sorted(dry_breakers_from_text(["ab"], pieces, tokenize)) == [[0, 1], [2, 1], [3]]
    assert sorted(dry_breakers_from_text(["\n", ""], pieces, tokenize)) == [[4], [5]]


def test_dry_with_breakers_built_from_text():
    # breaker "y" is token 3, so the repeat of "a b c" in llama.cpp's example is cut back to 3 tokens (see above)
    pieces = [b"a", b"b", b"c", b"y", b"z"]
    breakers = dry_breakers_from_text(["y"], pieces, lambda text: [])
    context = [0, 1, 2, 2, 1, 2, 3, 0, 1, 2]
    kept = dist_of(torch.zeros(5), context, dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=breakers)
    assert_dist(kept, dict(enumerate(softmax([0.0, 0.0, -1.4, 0.0, 0.0]))))


def test_the_callers_logits_are_left_untouched():
    logits = torch.tensor([1.0, -2.0, 3.0, 0.5])
    before = logits.clone()
    params = SamplingParams(seed=1, logit_bias={0: 5.0}, repeat_penalty=1.5, frequency_penalty=0.3, dry_multiplier=1.0,
                            dry_allowed_length=1)
    Sampler(params, 4).sample(logits, [2, 0, 2, 0])
    assert torch.equal(logits, before)


def test_pick_rows_give_what_each_sampler_gives():
    from kamado.engine.sampler import pick_rows

    gen = torch.Generator().manual_seed(3)
    settings = [dict(temperature=0, n_probs=0), dict(temperature=0, n_probs=5), dict(temperature=0.8, top_k=40, n_probs=3),
                dict(temperature=1.5, top_k=5, top_p=0.9, min_p=0.02, n_probs=8), dict(temperature=0.7, top_k=1000)]
    direct = [Sampler(SamplingParams(seed=11, **kw), 1000) for kw in settings]
    via_rows = [Sampler(SamplingParams(seed=11, **kw), 1000) for kw in settings]
    assert all(s.is_greedy or s.top_k_decides for s in via_rows)
    for _ in range(20):  # the samplers' random streams advance alike
        logits = torch.randn(len(settings), 1000, generator=gen) * 4
        for picked, sampler, row in zip(pick_rows(logits, via_rows), direct, logits, strict=True):
            expected = sampler.sample(row, [])
            assert picked.id == expected.id and picked.logprob == pytest.approx(expected.logprob, abs=1e-5)
            assert [i for i, _ in picked.top] == [i for i, _ in expected.top]
            assert [lp for _, lp in picked.top] == pytest.approx([lp for _, lp in expected.top], abs=1e-5)


def test_pick_rows_equal_sample_bit_for_bit_on_a_whole_vocabulary():
    # The engine samples CPU rows with pick_rows too: tokens, logprobs and top logprobs must be the per-row path's
    # exactly, and a row's result must not depend on the rows beside it (batch invariance).
    from kamado.engine.sampler import pick_rows

    vocab = 262144 + 5  # blocks of the whole vocabulary and a tail that does not fill one
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(5)) * 3
    settings = [dict(temperature=0.8, n_probs=2), dict(temperature=0, n_probs=1), dict(temperature=1.2, top_k=3, n_probs=4)]

    def samplers():
        return [Sampler(SamplingParams(seed=3, **kw), vocab) for kw in settings]

    per_row = [sampler.sample(row, []) for sampler, row in zip(samplers(), logits, strict=True)]
    together = pick_rows(logits, samplers())
    alone = [pick_rows(logits[i : i + 1], [sampler])[0] for i, sampler in enumerate(samplers())]
    assert together == per_row == alone


def test_pick_rows_leave_a_row_without_a_finite_best_to_the_sampler():
    from kamado.engine.sampler import pick_rows

    logits = torch.zeros(2, 10)
    logits[1] = -math.inf
    assert pick_rows(logits, [Sampler(SamplingParams(temperature=0), 10) for _ in range(2)]) is None


@pytest.mark.parametrize("params", [dict(temperature=0.8), dict(temperature=0, repeat_penalty=1.1),
                                    dict(temperature=0, logit_bias={1: 2.0}), dict(temperature=0, typical_p=0.9),
                                    dict(temperature=0, dry_multiplier=0.5)])
def test_a_chain_that_changes_logits_is_not_greedy(params):
    sampler = Sampler(SamplingParams(**params), 10)
    assert not sampler.is_greedy
    # llama.cpp's default top_k (40) decides unless something shifts logits before it (bias, penalties, DRY)
    assert sampler.top_k_decides == (not any(k in params for k in ("repeat_penalty", "logit_bias", "dry_multiplier")))


def test_pick_rows_logprobs_do_not_depend_on_the_rows_beside():
    # A whole-batch logsumexp sums each row in one thread, a lone row's is split over the threads: with 2 threads the
    # last bit of a row's log-normaliser (and so of every logprob) differed between the two in ~2% of Gemma-sized rows
    # (row 0 of this seed); pick_rows takes it row by row.
    from kamado.engine.sampler import pick_rows

    logits = torch.randn(8, 262144, generator=torch.Generator().manual_seed(0)) * 3
    samplers = [Sampler(SamplingParams(temperature=0, n_probs=2), 262144) for _ in range(8)]
    alone = [pick_rows(logits[i : i + 1], samplers[i : i + 1])[0] for i in range(8)]
    assert pick_rows(logits, samplers) == alone
