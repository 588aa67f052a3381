"""Tests of evaluation.py, the exact evaluation by enumeration of the expert's support.

- Tree scoring: every response's log π from one prefix tree per prompt equals token_logprobs of the response
  alone (a wrong parent, a leaked sibling in the tree mask, a shifted position fails), for a GPT and for the
  extrapolated policy.
- exact_metrics by hand on a two-prompt toy: every number computed here from its definition.
- Against the whole output space: a world whose sampler writes at most 2 tokens, so all 1 + (V−1) + (V−1)² ≈ 90k
  responses can be scored. P(off-support) is exact; the reverse and forward KL (with the floor's share, weighted
  by a large ε so that it matters) agree with the full sums within 4 of their reported standard errors, and so does
  Monte Carlo on the policy's own samples with the exact numbers.
"""
import math

import numpy as np
import pytest
import torch

import evaluation as ev
import objectives as obj
from data import World, WorldConfig
from model import GPT, GPTConfig, to_batch, token_logprobs
from sampling import Extrapolated, sample


def spread(model, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def seq_logprobs(model, pairs, eos):
    tokens, mask = to_batch([p for p, _ in pairs], [r for _, r in pairs], eos, "cpu")
    with torch.no_grad():
        return obj.sequence_logprob(token_logprobs(model, tokens, mask), mask)


def test_tree_scoring_equals_scoring_each_response_alone():
    world = World()
    prompts = world.sample_prompts(12, np.random.default_rng(0))
    cfg = GPTConfig(block_size=80, vocab_size=world.vocab_size, n_layer=2, n_head=2, n_embd=16)
    gpt, other = spread(GPT(cfg), 0.2, 0), spread(GPT(cfg), 0.2, 1)
    support = ev.support_of(world, prompts, "cpu")
    pairs = [(p.tokens, world.encode_response(t)) for p in prompts for t, _, _ in world.support(p)]
    assert len(pairs) == len(support.log_beta)
    for model in (gpt, Extrapolated(gpt, other, 0.5)):
        # a small budget: several batches, trees of different widths padded together
        tree = ev.tree_logprobs(model, ev.tree_batches(support.trees, "cpu", budget=1500))
        assert torch.allclose(tree, seq_logprobs(model, pairs, world.eos_id), atol=2e-4, rtol=1e-5)


def test_prefix_tree_shares_prefixes_and_keeps_each_path():
    tree = ev.prefix_tree([7, 8], [[1, 2, 3], [1, 2, 4], [1, 5], [6]])
    # 2 prompt tokens, then nodes 1, 2, 3, 4, 5, 6: six, not nine
    assert tree.tokens == [7, 8, 1, 2, 3, 4, 5, 6]
    assert [[tree.tokens[i] for i in path] for path in tree.paths] == [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
    assert tree.parent == [0, 0, 1, 2, 3, 3, 2, 1]
    assert tree.depth == [0, 1, 2, 3, 4, 4, 3, 2]
    assert tree.end == [8, 8, 7, 6, 5, 6, 7, 8]


def test_exact_metrics_by_hand():
    # two prompts; prompt 0's support: a (terse), b (steps); prompt 1's: c (terse)
    log_beta = np.log([0.6, 0.3, 0.9])
    support = ev.Support(np.array([0, 0, 1]), log_beta, np.array(["terse", "steps", "terse"]),
                         np.array([1.0, 0.5, 1.0]), [], [], 2)
    pi = np.array([0.5, 0.2, 0.4])   # π puts 0.3 off the support of prompt 0 and 0.6 off prompt 1's
    own = (np.array([100.0, 1.0, 80.0, 2.0]), np.array([0.0, 1.0, 0.5, 1.0]), np.array([True, False, True, False]))
    floor = (np.array([10.0, 30.0, 50.0]), np.array([True, True, False]))
    m = ev.exact_metrics(support, np.log(pi), own, floor, eps=0.1, mode_names=["terse", "sentence", "steps"])
    p_off = 1 - ((0.5 + 0.2) + 0.4) / 2
    assert m["off_support"] == pytest.approx(p_off)
    rkl_s = ((0.5 * math.log(0.5 / 0.6) + 0.2 * math.log(0.2 / 0.3)) + 0.4 * math.log(0.4 / 0.9)) / 2
    assert m["reverse_kl_support"] == pytest.approx(rkl_s)
    assert m["off_support_cost"] == pytest.approx(90.0)   # the mean over the off-support samples only
    assert m["reverse_kl"] == pytest.approx(rkl_s + p_off * 90.0)
    assert m["se"]["reverse_kl"] == pytest.approx(p_off * np.std([100.0, 80.0], ddof=1) / math.sqrt(2))
    kl0 = (0.5 / 0.7) * math.log((0.5 / 0.7) / (0.6 / 0.9)) + (0.2 / 0.7) * math.log((0.2 / 0.7) / (0.3 / 0.9))
    assert m["reverse_kl_on"] == pytest.approx((0.7 * kl0 + 0.4 * 0.0) / 1.1)
    fkl_s = ((0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.2)) + 0.9 * math.log(0.9 / 0.4)) / 2
    assert m["forward_kl_floor"] == pytest.approx(0.1 * (10 + 30 + 0) / 3)
    assert m["forward_kl"] == pytest.approx(fkl_s + 0.1 * 40 / 3)
    assert m["mode_freq"] == pytest.approx({"terse": (0.5 + 0.4) / 2, "sentence": 0.0, "steps": 0.1})
    q = np.array([0.45, 0.1]) / 0.55
    assert m["mode_entropy"] == pytest.approx(-(q * np.log(q)).sum())
    assert m["gold_reward"] == pytest.approx(((0.5 + 0.1) + 0.4) / 2 + p_off * 0.25)


def two_token_logprobs(model, prompt, responses, eos):
    """log π of responses of 1 or 2 tokens, by one plain forward pass (right-padded with <|eor|>, every row one
    length): token_logprobs' packing is for short batches, not for 90k rows."""
    P = len(prompt.tokens)
    tokens = torch.full((len(responses), P + 2), eos)
    tokens[:, :P] = torch.tensor(prompt.tokens)
    tokens[:, P:] = torch.tensor([y + [eos] * (2 - len(y)) for y in responses])
    mask = torch.tensor([[True] * len(y) + [False] * (2 - len(y)) for y in responses])
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens)[0][:, P - 1:-1], -1).gather(-1, tokens[:, P:, None])[..., 0]
    return (logp.double() * mask).sum(-1).numpy()


@pytest.fixture(scope="module")
def two_token_world():
    """Every response of the sampler's space (<|eor|>, t <|eor|>, t t'), scored by a small GPT; ε = 0.5 so that the
    floor's share of the forward KL is large."""
    cfg = WorldConfig(family_weights=(1, 0, 0), letters="AB", min_len=1, max_len=1, mode_weights=(1, 0, 0),
                      signature_p=0.0, q=0.7, eps=0.5, max_response_tokens=2)
    world = World(cfg)
    prompt = world.make_prompt("reverse", "A", "A")
    eos, others = world.eos_id, [t for t in range(world.vocab_size) if t != world.eos_id]
    space = [[eos]] + [[t, eos] for t in others] + [[t, u] for t in others for u in others]
    model = spread(GPT(GPTConfig(block_size=8, vocab_size=world.vocab_size, n_layer=1, n_head=1, n_embd=8)), 0.5, 3)
    # a few steps of maximum likelihood on the support make it about half of π's mass: both parts matter
    support = [world.encode_response(t) for t, _, _ in world.support(prompt)]
    tokens, mask = to_batch([prompt.tokens] * len(support), support, eos, "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(20):
        loss = -obj.sequence_logprob(token_logprobs(model, tokens, mask), mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    log_pi = two_token_logprobs(model, prompt, space, eos)
    # log β: the world's on its two support responses, the floor's everywhere else (the world's likelihood itself
    # is tested against this space in test_world.py)
    on = np.zeros(len(space), dtype=bool)
    log_beta = np.array([math.log(world.cfg.eps) - len(y) * world.log_vocab for y in space])
    for i in (space.index(y) for y in support):
        on[i], log_beta[i] = True, world.expert_logprob(prompt, space[i])
    return world, prompt, model, space, log_pi, log_beta, on


def test_exact_evaluation_against_the_whole_output_space(two_token_world):
    world, prompt, model, space, log_pi, log_beta, on = two_token_world
    pi, beta = np.exp(log_pi), np.exp(log_beta)
    assert math.fsum(pi) == pytest.approx(1, abs=1e-4) and math.fsum(beta) == pytest.approx(1, abs=1e-9)
    rkl, fkl = math.fsum(pi * (log_pi - log_beta)), math.fsum(beta * (log_beta - log_pi))

    support = ev.support_of(world, [prompt], "cpu")
    tree = ev.tree_logprobs(model, support.batches).double().numpy()
    g = torch.Generator().manual_seed(0)
    roll = sample(model, [prompt.tokens] * 20000, 2, world.eos_id, generator=g)
    responses = roll.responses()
    own_logpi = roll.logprobs.sum(-1).double().numpy()
    own_beta = world.expert_logprobs([prompt] * len(responses), responses)
    own = (own_logpi - own_beta, world.gold_rewards([prompt] * len(responses), responses),
           np.array([world.mode(prompt, y) == "off" for y in responses]))
    fp, fr = ev.floor_samples(world, [prompt], 20000, np.random.default_rng(1))
    floor = (world.expert_logprobs(fp, fr) - two_token_logprobs(model, prompt, fr, world.eos_id),
             np.array([world.mode(prompt, y) == "off" for y in fr]))
    m = ev.exact_metrics(support, tree, own, floor, world.cfg.eps, world.mode_names)

    assert m["off_support"] == pytest.approx(1 - math.fsum(pi[on]), abs=1e-5)   # exact
    assert 0.2 < m["off_support"] < 0.8                                          # both parts matter here
    assert m["reverse_kl_support"] == pytest.approx(math.fsum((pi * (log_pi - log_beta))[on]), abs=1e-4)
    assert abs(m["reverse_kl"] - rkl) < 4 * m["se"]["reverse_kl"] + 1e-4
    assert abs(m["forward_kl"] - fkl) < 4 * m["se"]["forward_kl"] + 1e-4
    assert m["forward_kl_floor"] > 0.3                                           # the ε-share is not negligible
    gold = np.zeros(len(space))   # r* > 0 only where a response ends in the answer's length: one token and <|eor|>
    for i in range(1, 1 + world.vocab_size - 1):
        gold[i] = world.gold_reward(prompt, space[i])
    assert abs(m["gold_reward"] - math.fsum(pi * gold)) < 4 * m["se"]["gold_reward"] + 1e-4
    # and plain Monte Carlo on the same samples agrees with the exact numbers within its own error
    mc = own[0]
    assert abs(mc.mean() - m["reverse_kl"]) < 4 * mc.std() / math.sqrt(len(mc)) + 4 * m["se"]["reverse_kl"]
    off = own[2]
    assert abs(off.mean() - m["off_support"]) < 4 * math.sqrt(m["off_support"] * (1 - m["off_support"]) / len(off))


def test_floor_samples_follow_the_floor_sampler():
    world = World(WorldConfig(family_weights=(1, 0, 0), min_len=1, max_len=1, mode_weights=(1, 0, 0),
                              signature_p=0.0, max_response_tokens=3))
    _, responses = ev.floor_samples(world, world.sample_prompts(5, np.random.default_rng(0)), 60000,
                                    np.random.default_rng(2))
    V = world.vocab_size
    for n in (1, 2):   # ends at <|eor|> after n tokens with probability ((V-1)/V)^(n-1) / V
        p = ((V - 1) / V) ** (n - 1) / V
        count = sum(len(y) == n and y[-1] == world.eos_id for y in responses)
        assert abs(count / len(responses) - p) < 4 * math.sqrt(p / len(responses))
    assert all(len(y) <= 3 and world.eos_id not in y[:-1] for y in responses)


@pytest.mark.parametrize("n_modes", [1, 3, 5])
def test_the_expert_scores_itself_exactly_at_every_n_modes(n_modes):
    """The exact evaluation of the n_modes knob's worlds (data/world.py): scored against its own support, the expert
    has forward KL 0 there, is off it only by its floor's ε, and its mode entropy is that of the format weights
    (∝ (0.5, 0.3, 0.2, 1/3, 1/3) cut to the first n_modes, by hand here), up to the floor's ε."""
    world = World(WorldConfig(n_modes=n_modes))
    prompts = world.sample_prompts(4, np.random.default_rng(3))
    support = ev.support_of(world, prompts, "cpu")
    m = ev.support_metrics(support, support.log_beta, world.mode_names)
    weights = {1: [1.0], 3: [0.5, 0.3, 0.2], 5: [0.3, 0.18, 0.12, 0.2, 0.2]}[n_modes]
    assert set(support.mode) == set(world.mode_names[:n_modes])
    assert m["forward_kl_support"] == pytest.approx(0, abs=1e-9)
    assert m["off_support"] == pytest.approx(world.cfg.eps, rel=1e-3)
    # the floor's ε V^-len share of each support string (≤ 1e-3 × 302^-3, relative) moves it by ~1e-8 nats
    assert m["mode_entropy"] == pytest.approx(-sum(w * math.log(w) for w in weights), abs=1e-6)
