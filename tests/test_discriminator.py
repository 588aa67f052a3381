"""The pipeline's discriminators (afd_mini.Discriminator) on tiny GPTs: both forms, both levels.

Guards against:
- an AIRL-form logit that is not log q_φ − log π (wrong sign, π not detached, token logits that do not add up
  to the response's logit), or that does not start at 0 (D = ½) when q_φ is a copy of the policy;
(Discriminator steps, both forms and levels, are pinned in tests/test_afd_mini.py.)
"""
import pytest
import torch

import afd_mini
from model import GPT, GPTConfig, token_logprobs

V, PROMPT, T = 7, 3, 6


def tiny_gpt(seed):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():   # spread the weights: a fresh GPT is nearly uniform and every logit ≈ 0
        for p in gpt.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return gpt


def batch(seed, token=None, n=8):
    """n rows: PROMPT prompt tokens, then a response of 2..T tokens (all `token` if given), right-padded."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n, PROMPT + T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, length in enumerate(lengths):
        mask[i, PROMPT:PROMPT + length] = True
    if token is not None:
        tokens = tokens.masked_fill(mask, token)
    return tokens, mask


@pytest.mark.parametrize("level", ["seq", "tok"])
def test_airl_form_starts_at_zero_where_the_policy_is_its_copy(level):
    policy = tiny_gpt(0)
    disc = afd_mini.new_discriminator(policy, "airl", level)
    tokens, mask = batch(1)
    with torch.no_grad():
        h = disc.logits(tokens, mask, token_logprobs(policy, tokens, mask))
    assert h.shape == ((len(tokens),) if level == "seq" else tokens.shape)
    assert torch.equal(h, torch.zeros_like(h)), "q_φ = π must give h = 0 (D = ½) exactly"
    assert disc.model is not policy   # a copy: training q_φ leaves the policy alone


def test_airl_form_token_logits_sum_to_the_sequence_logit():
    policy, q = tiny_gpt(0), tiny_gpt(1)
    tokens, mask = batch(2)
    with torch.no_grad():
        pi_logp, q_logp = token_logprobs(policy, tokens, mask), token_logprobs(q, tokens, mask)
        h_tok = afd_mini.Discriminator(q, "airl", "tok").logits(tokens, mask, pi_logp)
        h_seq = afd_mini.Discriminator(q, "airl", "seq").logits(tokens, mask, pi_logp)
    # independent: per-row Python sums of the two models' log-probs over the response tokens
    expected = torch.tensor([float(q_logp[i][mask[i]].sum() - pi_logp[i][mask[i]].sum()) for i in range(len(tokens))])
    torch.testing.assert_close(h_seq, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_tok.sum(-1), h_seq, atol=1e-5, rtol=0)
    assert torch.equal(h_tok[~mask], torch.zeros_like(h_tok[~mask]))
    assert (h_seq.abs() > 1e-2).all(), "test has no teeth: q_φ and π agree"
