"""Tests for sampling.py on the tiny CPU model of tests/test_model.py, each against an independent
computation: the KV cache against a full forward pass of the unpadded row at every step, the cached
sampler against the uncached one and a naive one-row greedy loop, its log-probs against
token_logprobs.

test_sampler_draws_from_the_tempered_top_k_distribution guards the sampler's distribution itself,
which test_sampler_logprobs cannot see: drawing from the untempered (or untruncated, or top-(k±1))
distribution while reporting the tempered log-prob, and reporting a log-prob of another distribution.

The extrapolated policy (Extrapolated) is checked on a tree small enough to enumerate: a vocabulary of EOS and
two tokens, every response of up to 3 tokens after one prompt. Its next-token distribution at every state, the
log-probs token_logprobs gives it and the frequencies of its samples are compared with
pi_SFT^(1+a) pi_init^(-a) / Z computed here from the two models' own softmax probabilities."""

import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from model import GPT, token_logprobs
from sampling import Extrapolated, KVCache, sample
from test_model import (EOS, PROMPTS, _spread_weights, full_logits, right_padded, rows_that_share_packed_rows,
                        tiny_config)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return _spread_weights(GPT(tiny_config())).eval()


def test_kv_cache_matches_full_forward_at_every_step(model):
    """Drive the cache the way the sampler does (left padding, per-row positions, one token per
    step) and compare each step's logits with a full forward pass of the unpadded row."""
    continuations = [[20, 21, 22, 23, 24], [25, 26, 27, 28, 29], [30, 31, 32, 33, 34]]
    P, n_steps = max(map(len, PROMPTS)), 5
    pad = torch.tensor([P - len(p) for p in PROMPTS])
    tokens = torch.tensor([[EOS] * (P - len(p)) + p + c for p, c in zip(PROMPTS, continuations)])
    slot = torch.arange(P + n_steps)[None, :]
    valid, pos = slot >= pad[:, None], (slot - pad[:, None]).clamp(min=0)
    cache = KVCache(model.config.n_layer, P + n_steps)
    with torch.no_grad():
        logits = model.lm_head(model.hidden(tokens[:, :P], pos=pos[:, :P], valid=valid[:, :P], kv_cache=cache))
        for b, p in enumerate(PROMPTS):  # the prefill, at every real prompt position
            torch.testing.assert_close(logits[b, pad[b]:], full_logits(model, p), atol=1e-5, rtol=0)
        for s in range(n_steps):
            t = P + s
            step = model.lm_head(model.hidden(tokens[:, t:t + 1], pos=pos[:, t:t + 1],
                                              valid=valid[:, :t + 1], kv_cache=cache))[:, -1]
            for b, (p, c) in enumerate(zip(PROMPTS, continuations)):
                torch.testing.assert_close(step[b], full_logits(model, p + c[:s + 1])[-1], atol=1e-5, rtol=0)


def test_greedy_cached_equals_uncached_and_naive_loop(model):
    max_new = 8
    cached = sample(model, PROMPTS, max_new, EOS, temperature=0)
    uncached = sample(model, PROMPTS, max_new, EOS, temperature=0, use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert torch.equal(cached.response_mask, uncached.response_mask)
    # independent reference: nanoGPT-style greedy, one row at a time, no padding, no cache
    for b, p in enumerate(PROMPTS):
        row = list(p)
        for _ in range(max_new):
            row.append(int(full_logits(model, row)[-1].argmax()))
            if row[-1] == EOS:
                break
        n = len(row)
        assert cached.tokens[b, :n].tolist() == row
        assert (cached.tokens[b, n:] == EOS).all() and not cached.response_mask[b, n:].any()
        assert cached.response_mask[b].nonzero().flatten().tolist() == list(range(len(p), n))


def test_sampling_reproducible_with_seed(model):
    def draw(seed):
        return sample(model, PROMPTS * 2, 10, EOS, generator=torch.Generator().manual_seed(seed)).tokens
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_sampler_logprobs(model):
    g = torch.Generator().manual_seed(3)
    roll = sample(model, PROMPTS * 3, 12, EOS, generator=g)
    torch.testing.assert_close(roll.logprobs, token_logprobs(model, roll.tokens, roll.response_mask),
                               atol=1e-5, rtol=0)
    # with temperature and top-k: the log-prob under the tempered, truncated distribution
    temperature, k = 0.7, 5
    roll = sample(model, PROMPTS, 12, EOS, temperature=temperature, top_k=k, generator=g)
    with torch.no_grad():
        logits = model(roll.tokens)[0][:, :-1] / temperature
    kth = logits.topk(k, dim=-1).values[..., -1:]
    logp = F.log_softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
    expected = F.pad(logp.gather(-1, roll.tokens[:, 1:, None]).squeeze(-1), (1, 0))
    m = roll.response_mask
    torch.testing.assert_close(roll.logprobs[m], expected[m], atol=1e-5, rtol=0)
    assert (roll.logprobs[~m] == 0).all() and torch.isfinite(roll.logprobs).all()


@pytest.mark.parametrize("temperature, top_k", [(0.5, 5), (2.0, None)])
def test_sampler_draws_from_the_tempered_top_k_distribution(temperature, top_k):
    """Many rows with one prompt: the first response tokens are n independent draws from
    p = softmax(logits / T) restricted to the top k, computed here from a plain forward pass."""
    torch.manual_seed(0)
    model = _spread_weights(GPT(tiny_config()), std=0.6).eval()   # logits spread enough for T to matter
    prompt, n = PROMPTS[1], 4000
    with torch.no_grad():
        logits = full_logits(model, prompt)[-1].double()
    keep = torch.arange(logits.numel()) if top_k is None else logits.topk(top_k).indices
    p = torch.zeros_like(logits)
    p[keep] = F.softmax(logits[keep] / temperature, dim=-1)
    roll = sample(model, [prompt] * n, 1, EOS, temperature=temperature, top_k=top_k,
                  generator=torch.Generator().manual_seed(0))
    first = roll.tokens[:, len(prompt)]
    counts = torch.bincount(first, minlength=logits.numel()).double()
    # Bound: the count of token v is Binomial(n, p_v), standard error se_v = sqrt(n p_v (1 − p_v)). We allow
    # 4.5 se_v per token: a two-sided normal tail of 6.8e-6, under 3e-4 over the 37 tokens by the union bound
    # (and the seed is fixed, so the test is deterministic).
    se = (n * p * (1 - p)).sqrt()
    assert (counts[p == 0] == 0).all(), "the sampler drew a token outside the top k"
    worst = ((counts - n * p).abs() / se)[p > 0].max().item()
    assert worst <= 4.5, f"first-token counts are {worst:.1f} standard errors from softmax(logits / T) over the top k"
    # Teeth: the distributions a plausible bug samples from are far outside that bound (or would show a token
    # that must not appear), so such a sampler fails with overwhelming probability.
    wrong = {"untempered": torch.zeros_like(p).index_put_((keep,), F.softmax(logits[keep], dim=-1))}
    if top_k is not None:
        for name, k in (("top-(k+1)", top_k + 1), ("top-(k-1)", top_k - 1)):
            idx = logits.topk(k).indices
            wrong[name] = torch.zeros_like(p).index_put_((idx,), F.softmax(logits[idx] / temperature, dim=-1))
    for name, q in wrong.items():
        gap = ((n * q - n * p).abs() / se.clamp_min(1e-12)).max().item()
        assert gap > 10, f"test has no teeth: a sampler drawing from the {name} distribution is only {gap:.1f} se off"
    # the reported log-prob is that of the distribution sampled from
    torch.testing.assert_close(roll.logprobs[:, len(prompt)].double(), p.log()[first], atol=1e-5, rtol=0)


def test_nothing_after_end_token(model):
    max_new = 12
    prompts = PROMPTS * 6
    roll = sample(model, prompts, max_new, EOS, temperature=3.0, generator=torch.Generator().manual_seed(0))
    ended = 0
    for b, p in enumerate(prompts):
        response = roll.response_mask[b].nonzero().flatten().tolist()
        assert response == list(range(len(p), len(p) + len(response)))  # right after the prompt
        assert roll.tokens[b, :len(p)].tolist() == p
        end = len(p) + len(response)
        assert (roll.tokens[b, end:] == EOS).all() and (roll.logprobs[b, end:] == 0).all()
        generated = roll.tokens[b, len(p):end].tolist()
        if EOS in generated:
            assert generated.index(EOS) == len(generated) - 1  # stops at its end token...
            ended += 1
        else:
            assert len(generated) == max_new  # ...or at the limit
    assert 0 < ended < len(prompts)  # the seed exercises both cases
    assert roll.tokens.size(1) == max(len(p) + int(m.sum()) for p, m in zip(prompts, roll.response_mask))

def test_sample_refuses_more_tokens_than_block_size(model):
    with pytest.raises(ValueError, match="block_size"):
        sample(model, PROMPTS, 30, EOS)


# -----------------------------------------------------------------------------
# The extrapolated policy pi_alpha ~ pi_SFT^(1+alpha) pi_init^(-alpha), checked on an enumerable tree

TREE_PROMPT = [1, 2, 1]
TREE_PREFIXES = [list(p) for n in range(3) for p in itertools.product((1, 2), repeat=n)]   # the 7 states
TREE_RESPONSES = [p + [EOS] for p in TREE_PREFIXES] + [list(p) for p in itertools.product((1, 2), repeat=3)]   # 15


def two_models(vocab_size=3, std=0.2):
    """pi_SFT and pi_init: two tiny GPTs with different, spread weights."""
    return tuple(_spread_weights(GPT(tiny_config(vocab_size=vocab_size)), std, seed).eval() for seed in (1, 2))


def extrapolated_probs(sft, init, row, alpha):
    """(len(row), V): pi_alpha(. | row[:t + 1]) at every t by the formula, from each model's own next-token
    probabilities (a plain forward pass of the row), in float64."""
    with torch.no_grad():
        p_sft, p_init = (F.softmax(full_logits(m, row).double(), -1) for m in (sft, init))
    q = p_sft ** (1 + alpha) * p_init ** (-alpha)
    return q / q.sum(-1, keepdim=True)


def formula_token_logprobs(sft, init, row, start, alpha):
    """log pi_alpha(row[t] | row[:t]) for t = start, ..., len(row) - 1, by the formula."""
    q = extrapolated_probs(sft, init, row, alpha)
    return q[torch.arange(start - 1, len(row) - 1), row[start:]].log()


def response_logprob(sft, init, response, alpha):
    """log pi_alpha(y | TREE_PROMPT) = sum over the response's tokens of the formula's log-probs."""
    return formula_token_logprobs(sft, init, TREE_PROMPT + response, len(TREE_PROMPT), alpha).sum()


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_extrapolated_next_token_distribution_at_every_state_of_a_tree(alpha):
    """At each of the tree's states, the mixture's full forward pass and its next_token_logits (the sampler's
    entry) give pi_SFT^(1+a) pi_init^(-a) / Z."""
    sft, init = two_models()
    mix = Extrapolated(sft, init, alpha)
    for prefix in TREE_PREFIXES:
        row = TREE_PROMPT + prefix
        q = extrapolated_probs(sft, init, row, alpha)[-1]
        with torch.no_grad():
            full, step = mix(torch.tensor([row]))[0][0, -1], mix.next_token_logits(torch.tensor([row]))[0]
        torch.testing.assert_close(full.double().exp(), q, atol=1e-6, rtol=0)
        torch.testing.assert_close(step.double().exp(), q, atol=1e-6, rtol=0)
        if alpha == 1.0:
            assert (q - extrapolated_probs(sft, init, row, 0.0)[-1]).abs().max() > 0.05, \
                "test has no teeth: pi_alpha ~ pi_SFT"


def test_extrapolated_token_logprobs_of_every_response():
    """token_logprobs on the mixture, all 15 responses in one right-padded batch: each token's log-prob is the
    formula's at its state, and the responses' probabilities sum to 1; and on rows that share packed rows."""
    sft, init = two_models()
    mix, alpha = Extrapolated(sft, init, 1.0), 1.0
    P = len(TREE_PROMPT)
    tokens, mask = right_padded([TREE_PROMPT + y for y in TREE_RESPONSES], [P] * len(TREE_RESPONSES), pad=EOS)
    out = token_logprobs(mix, tokens, mask)
    for b, y in enumerate(TREE_RESPONSES):
        expected = formula_token_logprobs(sft, init, TREE_PROMPT + y, P, alpha)
        torch.testing.assert_close(out[b, P:P + len(y)].double(), expected, atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()
    torch.testing.assert_close(out.sum(-1).double().exp().sum(), torch.tensor(1.0, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # rows that share packed rows (the tree's do not): each part must see pos and mask
    sft, init = two_models(vocab_size=37, std=0.3)
    rows, lengths, tokens, mask = rows_that_share_packed_rows()
    out = token_logprobs(Extrapolated(sft, init, alpha), tokens, mask)
    for b, (r, (p, k)) in enumerate(zip(rows, lengths)):
        if k:
            expected = formula_token_logprobs(sft, init, r[:p + k], p, alpha)
            torch.testing.assert_close(out[b, p:p + k].double(), expected, atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()


def test_sampler_draws_whole_responses_from_the_extrapolated_policy():
    """4000 responses of one prompt from sample(Extrapolated(...)): each of the 15 responses' count is within
    4.5 standard errors of n pi_alpha(y), the enumerated formula (the bound of
    test_sampler_draws_from_the_tempered_top_k_distribution), and the reported log-probs sum to log pi_alpha(y)."""
    sft, init = two_models()
    alpha, n, P = 1.0, 4000, len(TREE_PROMPT)
    p = torch.stack([response_logprob(sft, init, y, alpha) for y in TREE_RESPONSES]).exp()
    roll = sample(Extrapolated(sft, init, alpha), [TREE_PROMPT] * n, 3, EOS, generator=torch.Generator().manual_seed(0))
    drawn = [tuple(roll.tokens[b, P:P + int(k)].tolist()) for b, k in enumerate(roll.response_mask.sum(1))]
    count = Counter(drawn)
    assert set(count) <= {tuple(y) for y in TREE_RESPONSES}
    counts = torch.tensor([count[tuple(y)] for y in TREE_RESPONSES], dtype=torch.float64)
    se = (n * p * (1 - p)).sqrt()
    worst = ((counts - n * p).abs() / se).max().item()
    assert worst <= 4.5, f"response counts are {worst:.1f} standard errors from pi_SFT^(1+a) pi_init^(-a) / Z"
    # teeth: pi_SFT itself, the weights swapped, the sign of alpha flipped (= pi_init at alpha = 1)
    for name, a, (m1, m2) in (("pi_SFT", 0.0, (sft, init)), ("swapped", alpha, (init, sft)),
                              ("alpha flipped", -alpha, (sft, init))):
        q = torch.stack([response_logprob(m1, m2, y, a) for y in TREE_RESPONSES]).exp()
        gap = ((n * q - n * p).abs() / se).max().item()
        assert gap > 10, f"test has no teeth: sampling from {name} is only {gap:.1f} se off"
    index = {tuple(y): i for i, y in enumerate(TREE_RESPONSES)}
    torch.testing.assert_close(roll.logprobs.sum(-1).double(), p.log()[[index[y] for y in drawn]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 5)])
def test_extrapolated_sampler_logprobs_and_cache(temperature, top_k):
    """On the 37-token model with prompts of different lengths: the sampler's log-probs are those of what it
    drew under the mixture (token_logprobs at temperature 1; tempered, top-k otherwise), and the cached sampler
    draws exactly what the uncached one draws (one KV cache per part), sampled and greedy."""
    sft, init = two_models(vocab_size=37, std=0.3)
    mix = Extrapolated(sft, init, 1.5)
    kw = dict(temperature=temperature, top_k=top_k)
    roll = sample(mix, PROMPTS * 3, 12, EOS, generator=torch.Generator().manual_seed(3), **kw)
    m = roll.response_mask
    assert m.sum(1).min() > 0 and (roll.tokens[m] != EOS).any()
    if temperature == 1.0 and top_k is None:
        torch.testing.assert_close(roll.logprobs, token_logprobs(mix, roll.tokens, m), atol=1e-5, rtol=0)
    else:
        with torch.no_grad():
            logits = mix(roll.tokens)[0][:, :-1] / temperature
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logp = F.log_softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        expected = F.pad(logp.gather(-1, roll.tokens[:, 1:, None]).squeeze(-1), (1, 0))
        torch.testing.assert_close(roll.logprobs[m], expected[m], atol=1e-5, rtol=0)
    uncached = sample(mix, PROMPTS * 3, 12, EOS, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert torch.equal(roll.tokens, uncached.tokens) and torch.equal(m, uncached.response_mask)
    torch.testing.assert_close(roll.logprobs, uncached.logprobs, atol=1e-5, rtol=0)
    greedy = [sample(mix, PROMPTS, 12, EOS, temperature=0, use_cache=c).tokens for c in (True, False)]
    assert torch.equal(*greedy)


def test_extrapolated_at_alpha_zero_is_pi_sft(model):
    """alpha = 0: with the same generator, the same tokens as sampling pi_SFT itself; the same log-probs."""
    init = _spread_weights(GPT(tiny_config()), seed=1).eval()
    mix = Extrapolated(model, init, 0.0)
    a, b = (sample(m, PROMPTS * 3, 12, EOS, generator=torch.Generator().manual_seed(5)) for m in (model, mix))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_logprobs(mix, a.tokens, a.response_mask),
                               token_logprobs(model, a.tokens, a.response_mask), atol=1e-5, rtol=0)
    c = sample(Extrapolated(model, init, 1.0), PROMPTS * 3, 12, EOS, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a.tokens, c.tokens), "test has no teeth: alpha = 1 samples what pi_SFT samples"


def test_sample_restores_each_parts_mode_and_extrapolated_checks_its_parts():
    sft, init = two_models()
    sft.train()
    mix = Extrapolated(sft, init, 1.0)   # a new module: in training mode; init stays in eval mode
    sample(mix, [TREE_PROMPT], 3, EOS)
    assert mix.training and sft.training and not init.training, "sample must give each module its own mode back"
    with pytest.raises(ValueError, match="vocab_size"):
        Extrapolated(sft, GPT(tiny_config(vocab_size=5)), 1.0)
