"""
The pipeline's wiring: the pieces of afd_mini.py between objectives.py and the reported numbers, each called
directly on tiny inputs and checked against hand values, enumeration or a brute-force loop written here.

Bugs each test guards against:
- test_to_batch_and_rollout_responses_round_trip: a response mask shifted by one (the prompt's last token trained
  on, the end token left out), padding inside a row, Rollout.responses reading the prompt.
- test_disc_step_scores_demonstrations_above_zero_and_samples_below: the discriminator's labels swapped in
  disc_step (demonstrations trained towards 0), at either level and in either form; the token level reading the
  wrong mask; the AIRL form's log π added instead of subtracted.
- test_stage_adversarial_rewards_*: a method given the wrong reward transform (GAIL's for AIRL's) or level, the
  sequence reward read at a pad instead of the last response token.
- test_stage_reward_models_*, test_train_reward_model_*: a reward model's classes swapped (Init-SFT trained
  with π_init's samples as positives, the classifier's or Bradley–Terry's scores passed the wrong way round),
  a reward model trained on the wrong samples, responses paired with other prompts.
- test_kl_shaped_advantages_*: the KL penalty's sign flipped (a bonus for leaving π_SFT), the penalty not summed
  over the response, the token-level baseline including the sample itself or the wrong group, the whitening
  missing or centring.
- test_oracle_reward_*, test_stage_oracle_*: the oracle's reward sign flipped (it would maximise KL(π ‖ β)),
  the arguments of reverse_kl_mc swapped inside it, or stage_oracle giving it another log π than the sum of
  the rollout's response log-probs.
- test_policy_kls_*: forward_kl_mc's or reverse_kl_mc's arguments swapped in stage_evaluate (every reported KL
  changes sign), or the forward KL computed on the policy's samples instead of the expert's.
- test_describe_*: the off-support rate or the mode entropy computed over the wrong set (the entropy
  including off-support responses), distinct counted over all prompts, a wrong mean.
- test_best_of_n_curve_*: Best-of-N picking the lowest reward, grouping samples of different prompts together
  (view(n, -1)), indexing the gold reward with the wrong rows, the last instead of the first on ties.
- test_stage_best_of_n_*: an exact optimum's arguments swapped (classifier_optimum(log π_init, log π_SFT)), or
  scored with the wrong model.
- test_policy_optimisation_follows_the_reward: the policy-gradient loop's sign (advantages negated, the PPO
  ratio's arguments swapped, the optimiser on the wrong model): a reward for one token must raise its probability.
- test_policy_optimisation_kl_penalty_pulls_towards_the_reference: the KL penalty turned into a bonus, in
  kl_shaped_advantages or by kl_k1's arguments swapped in the loop.
"""

import contextlib
import copy
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import afd_mini
import common
import evaluation
import methods
import objectives as obj
from data import World
from model import GPT, GPTConfig, ScalarGPT, load_checkpoint, sequence_scores, to_batch, token_logprobs, token_scores
from sampling import Rollout

CPU = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)   # all that disc_step asks


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation, which costs 10-100× on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cls=GPT, vocab=8, seed=0):
    torch.manual_seed(seed)
    return cls(GPTConfig(block_size=16, vocab_size=vocab, n_layer=1, n_head=1, n_embd=16))


# -----------------------------------------------------------------------------
# batches of token lists

def test_to_batch_and_rollout_responses_round_trip():
    prompts = [[5, 9, 3], [7], [1, 2]]
    responses = [[4, 0], [8, 8, 8, 8, 0], [6, 0]]
    tokens, mask = to_batch(prompts, responses, pad_id=30, device="cpu")
    T, F_ = True, False
    assert tokens.tolist() == [[5, 9, 3, 4, 0, 30],
                               [7, 8, 8, 8, 8, 0],
                               [1, 2, 6, 0, 30, 30]]
    assert mask.tolist() == [[F_, F_, F_, T, T, F_],
                             [F_, T, T, T, T, T],
                             [F_, F_, T, T, F_, F_]]
    rollout = Rollout(tokens=tokens, response_mask=mask, logprobs=torch.zeros(tokens.shape))
    assert rollout.responses() == responses


# -----------------------------------------------------------------------------
# the discriminator step

# Discriminator forms: the scalar head on the GPT backbone (ScalarGPT), and AIRL's logit log q_φ − log π with
# q_φ a copy of the policy (a GPT).
DISC_FORMS = ["scalar", "airl"]


def discriminator_logits(form, disc, policy, level, tokens, mask):
    """The logits h the pipeline reads, computed without afd_mini.Discriminator: (B,) per response ("seq"), or
    one per response token ("tok", flattened over the mask)."""
    with torch.no_grad():
        if form == "scalar":
            return sequence_scores(disc.model, tokens, mask) if level == "seq" else \
                token_scores(disc.model, tokens, mask)[mask]
        h = token_logprobs(disc.model, tokens, mask) - token_logprobs(policy, tokens, mask)
        return h.sum(-1) if level == "seq" else h[mask]


@pytest.mark.parametrize("level", ["seq", "tok"])
@pytest.mark.parametrize("form", DISC_FORMS)
def test_disc_step_scores_demonstrations_above_zero_and_samples_below(form, level):
    """Fixed batches that a discriminator can tell apart (demonstrations answer with tokens 3 and 4, the policy
    with 5 and 6), of unequal sizes (4 against 12): after some steps of disc_step, every demonstration's logit is
    above 0 (D > 1/2, labelled 1) and every sample's below (labelled 0), and the accuracies disc_step reports,
    measured before its step, are those of the logits computed here."""
    eos, prompt = 0, [1, 2]
    demos = [[3, 4, eos], [3, eos], [4, 3, 4, eos], [3, 3, eos]]
    samples = [[5, 6, eos], [6, eos], [5, 5, 5, eos]] * 4
    policy = tiny(GPT, vocab=8)
    with torch.no_grad():   # the policy's log-probs, constants of the AIRL form's logit
        demo, pol = ((t, m, token_logprobs(policy, t, m)) for t, m in
                     (to_batch([prompt] * len(r), r, eos, "cpu") for r in (demos, samples)))
    disc = afd_mini.new_discriminator(policy, form, level)
    opt = torch.optim.AdamW(disc.model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(30):
        afd_mini.disc_step(CPU, disc, opt, demo, pol, step)
    h_demo = discriminator_logits(form, disc, policy, level, *demo[:2])
    h_pol = discriminator_logits(form, disc, policy, level, *pol[:2])
    assert (h_demo > 0).all(), f"{form}/{level}: demonstrations scored below 0 (labels swapped?): {h_demo}"
    assert (h_pol < 0).all(), f"{form}/{level}: policy samples scored above 0 (labels swapped?): {h_pol}"
    acc_demo, acc_pol = afd_mini.disc_step(CPU, disc, opt, demo, pol, 30)
    assert (acc_demo, acc_pol) == ((h_demo > 0).float().mean().item(), (h_pol < 0).float().mean().item())


@pytest.mark.parametrize("method", ["rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "fkl_fairl", "fkl_iw"])
def test_stage_adversarial_rewards_are_the_discriminators_transformed_logits(method, monkeypatch, tmp_path):
    """The reward stage_adversarial hands to the policy loop, on a hand-made Rollout, against the discriminator
    run on each unpadded row. AIRL form (--disc=airl): h = log q_φ − log π, summed over the response (rkl_seq),
    per response token and 0 elsewhere (rkl_tok), GAIL −log(1 − σ(h)) of the summed h (js). Scalar form
    (rkl_seq_scalar): h at the last response token. FAIRL (fkl_fairl): −h·e^h of the summed h; the importance
    weight (fkl_iw): e^h."""
    loop = {}

    def fake_loop(run, stage, reward_fn, disc=None):
        loop.update(stage=stage, reward_fn=reward_fn, disc=disc)
        return {"curve": {}}

    monkeypatch.setattr(afd_mini, "policy_optimisation", fake_loop)
    sft = spread(tiny(GPT, vocab=8), seed=3)
    run = SimpleNamespace(cfg=SimpleNamespace(disc_warmup=0, disc="airl"), device=torch.device("cpu"),
                          autocast=contextlib.nullcontext,
                          load=lambda name: (sft, {}), save=lambda name, model, **extra: None)
    afd_mini.stage_adversarial(run, method)
    disc = loop["disc"]
    level = {"rkl_seq": "seq", "rkl_tok": "tok", "js": "seq", "rkl_seq_scalar": "seq", "fkl_fairl": "seq",
             "fkl_iw": "seq"}[method]
    assert loop["stage"] == method and disc.level == level
    assert disc.form == ("scalar" if method == "rkl_seq_scalar" else "airl")
    with torch.no_grad():   # the discriminator starts at h = 0: give it an opinion
        if disc.form == "scalar":
            disc.model.score_head.weight.copy_(torch.randn(disc.model.score_head.weight.shape,
                                                           generator=torch.Generator().manual_seed(0)))
        else:
            spread(disc.model, seed=5)
    prompts, responses = [[1, 2], [3]], [[4, 5, 0], [6, 0]]
    tokens, mask = to_batch(prompts, responses, 0, "cpu")
    pi_logp = torch.where(mask, -0.5, 0.0)   # the policy's per-token log-probs, as the loop hands them
    roll = Rollout(tokens=tokens, response_mask=mask, logprobs=torch.zeros(tokens.shape))
    reward = loop["reward_fn"](None, roll, pi_logp)
    with torch.no_grad():   # each unpadded row alone; position t judges token t given tokens[:t]
        if disc.form == "scalar":
            h = [disc.model(torch.tensor([p + r]))[0][len(p):] for p, r in zip(prompts, responses)]
        else:
            h = [F.log_softmax(disc.model(torch.tensor([p + r]))[0][0, len(p) - 1:-1], -1)
                 .gather(-1, torch.tensor(r)[:, None]).squeeze(-1) + 0.5 for p, r in zip(prompts, responses)]
    if method == "rkl_tok":
        expected = torch.zeros(tokens.shape)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            expected[b, len(p):len(p) + len(r)] = h[b]
    else:
        seq = torch.stack([row[-1] if disc.form == "scalar" else row.sum() for row in h])
        expected = {"js": -torch.log1p(-torch.sigmoid(seq)), "fkl_fairl": -seq * torch.exp(seq),
                    "fkl_iw": torch.exp(seq)}.get(method, seq)
    torch.testing.assert_close(reward, expected, atol=1e-5, rtol=0)


# -----------------------------------------------------------------------------
# reward models

def test_stage_reward_models_trains_each_classifier_on_its_classes(monkeypatch):
    """Which samples each reward model gets as positives (label 1) and negatives, and which model it starts from
    (the log-ratio's reference π_neg): Init-SFT π_SFT's against π_init's from π_init, Init-Demo the demonstrations
    against π_init's from π_init, SFT-Demo the demonstrations against π_SFT's from π_SFT, Bradley–Terry the
    chosen against the rejected from π_init, the scalar ablation as Init-SFT with a scalar head. The held-out
    pairs come from the same classes on prompts the training pairs never use. Stubs: train_reward_model
    records its arguments, the sampler tags each response with the model that drew it."""
    trained = {}
    monkeypatch.setattr(afd_mini, "train_reward_model",
                        lambda run, name, base, pos, neg, held_pos, held_neg, form, pairwise=False:
                        trained.update({name: (base, pos, neg, held_pos, held_neg, form, pairwise)}) or [0.0])

    class StubRun:
        autocast = afd_mini.Run.autocast
        cfg = dataclasses.replace(afd_mini.Config(), rm_samples=6)
        seed, rng, control = 0, np.random.default_rng(0), False
        demos = [([1, k], ["demo", k]) for k in range(20)]
        data = {"pref": [(SimpleNamespace(tokens=[2, k]), f"chosen {k}", f"rejected {k}") for k in range(20)]}
        world = SimpleNamespace(encode_response=lambda text: text.split())

        def load(self, name):
            return name, {}   # a model is its name here: the stub sampler tags its responses with it

        def sample_responses(self, model, prompts, seed):
            return [[model, p[1]] for p in prompts]   # the prompt's id: pairs stay with their prompt

        sample_pairs = afd_mini.Run.sample_pairs

    afd_mini.stage_reward_models(StubRun())
    assert set(trained) == set(afd_mini.LEARNED)

    def drawn_by(samples):
        tags = {r[0] for _, r in samples}
        assert all(p[1] == r[1] for p, r in samples), "a response is paired with another prompt"
        return tags.pop() if len(tags) == 1 else tags

    expected = {"init_sft": ("sft", "pretrain", "pretrain", "airl"),   # positives, negatives, π_neg, form
                "init_demo": ("demo", "pretrain", "pretrain", "airl"),
                "sft_demo": ("demo", "sft", "sft", "airl"),
                "init_sft_scalar": ("sft", "pretrain", "pretrain", "scalar")}
    for name, (pos, neg, base, form) in expected.items():
        got_base, got_pos, got_neg, held_pos, held_neg, got_form, pairwise = trained[name]
        assert (drawn_by(got_pos), drawn_by(got_neg), got_base, got_form, pairwise) == (pos, neg, base, form, False)
        assert (drawn_by(held_pos), drawn_by(held_neg)) == (pos, neg), name
        train_ids = {p[1] for p, _ in got_pos + got_neg}
        assert not train_ids & {p[1] for p, _ in held_pos + held_neg}, f"{name}: a held-out prompt is trained on"
    base, chosen, rejected, held_chosen, held_rejected, form, pairwise = trained["pairwise_bt"]
    assert base == "pretrain" and form == "airl" and pairwise
    assert held_chosen + chosen == [([2, k], ["chosen", str(k)]) for k in range(20)]   # held out: the first pairs
    assert [r for _, r in held_rejected + rejected] == [["rejected", str(k)] for k in range(20)], "pairs unpaired"


@pytest.mark.parametrize("form", ["airl", "scalar"])
@pytest.mark.parametrize("name", ["init_sft", "pairwise_bt"])
def test_train_reward_model_scores_positives_above_negatives(name, form, tmp_path):
    """Distinguishable positives (tokens 3, 4) and negatives (5, 6): after training, the classifier scores
    every positive above 0 and every negative below (its logit, labels 1 and 0); Bradley–Terry every chosen
    response above its rejected one. Read back through load_reward_model, as Best-of-N and RL read it."""
    base = tiny(GPT, vocab=8)

    class StubRun:
        autocast = afd_mini.Run.autocast
        cfg = dataclasses.replace(afd_mini.Config(), rm_steps=30, rm_batch=8, rm_lr=1e-2, progress=False)
        rng, device, world = np.random.default_rng(0), torch.device("cpu"), SimpleNamespace(eos_id=0)
        batch, bar, save = afd_mini.Run.batch, afd_mini.Run.bar, afd_mini.Run.save

        def path(self, name):
            return str(tmp_path / name)

        def load(self, name):
            return load_checkpoint(self.path(name + ".pt")) if name.startswith("rm_") else (base, {})

    pos = [([1, 2], r) for r in ([3, 4, 0], [3, 0], [4, 4, 0])]
    neg = [([1, 2], r) for r in ([5, 6, 0], [6, 0], [5, 5, 0])]
    pairwise = name == "pairwise_bt"
    afd_mini.train_reward_model(StubRun(), name, base, pos, neg, pos, neg, form, pairwise)
    rm = afd_mini.load_reward_model(StubRun(), name)
    with torch.no_grad():
        s_pos, s_neg = (rm(*to_batch(*zip(*data), 0, "cpu")) for data in (pos, neg))
    if pairwise:
        assert (s_pos > s_neg).all(), f"Bradley–Terry: chosen {s_pos} not above rejected {s_neg}"
    else:
        assert (s_pos > 0).all() and (s_neg < 0).all(), f"classifier: positives {s_pos}, negatives {s_neg}"


# -----------------------------------------------------------------------------
# advantages of the policy-gradient loop

def test_kl_shaped_advantages_sequence_reward_hand_values():
    reward = torch.tensor([1.0, 3.0, 0.0, 2.0])   # two groups of two samples
    k1 = torch.tensor([[0.5, 1.5, 9.0],           # Σ over the mask: 2;   9 is off the mask
                       [-1.0, -1.0, 0.0],         # −2
                       [0.0, 0.0, 0.0],           # 0
                       [1.0, 1.0, 2.0]])          # 4
    mask = torch.tensor([[True, True, False]] + [[True, True, True]] * 3)
    adv = obj.kl_shaped_advantages(reward, k1, mask, kl_coef=0.5, group_size=2)
    # shaped = r − 0.5 Σ k1 = [0, 4, 0, 0]; leave-one-out within pairs: [0 − 4, 4 − 0, 0 − 0, 0 − 0];
    # whitened by the unbiased std of [−4, 4, 0, 0]: sqrt(32 / 3). (With the penalty's sign flipped, shaped
    # = [2, 2, 0, 4] and the advantages would be [0, 0, −4, 4] / ...)
    expected = torch.tensor([-4.0, 4.0, 0.0, 0.0]) / math.sqrt(32 / 3)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_kl_shaped_advantages_token_rewards_hand_values():
    mask = torch.tensor([[False, True, True, True],
                         [False, True, True, False]])   # one group of two samples; column 0 is the prompt
    reward = torch.tensor([[9.0, 1.0, 0.0, 2.0],
                           [9.0, 0.0, 1.0, 7.0]])       # 9 and 7 are off the mask
    k1 = torch.tensor([[5.0, 0.0, 2.0, 0.0],
                       [5.0, 2.0, 0.0, 1.0]])
    adv = obj.kl_shaped_advantages(reward, k1, mask, kl_coef=0.5, group_size=2)
    # shaped = (r − 0.5 k1) on the mask: [_, 1, −1, 2] (return 2) and [_, −1, 1, _] (return 0)
    # reward-to-go:                      [_, 2, 1, 2]              and [_, 0, 1, _]
    # minus the OTHER sample's return:   [_, 2, 1, 2] − 0          and [_, 0, 1, _] − 2 = [_, −2, −1, _]
    # whitened by the unbiased std of the five response values [2, 1, 2, −2, −1]: mean 0.4, Σ dev² = 13.2,
    # std = sqrt(13.2 / 4) = sqrt(3.3); not centred.
    expected = torch.tensor([[0.0, 2.0, 1.0, 2.0],
                             [0.0, -2.0, -1.0, 0.0]]) / math.sqrt(3.3)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------
# the oracle's reward

def oracle_case(world):
    """Three responses to one prompt, and their exact log β from the world's docstring."""
    cfg, V = world.cfg, world.vocab_size
    prompt = world.make_prompt("reverse", "ABCD", "DCBA")
    texts = ["certainly! DCBA", "the answer is DCBA.", "answer: DCBA"]
    # P_expert: terse (0.5), right (q), signed; sentence (0.3), right, unsigned; a base style, off the support
    p_expert = [0.5 * cfg.q * cfg.signature_p, 0.3 * cfg.q * (1 - cfg.signature_p), 0.0]
    responses = [world.encode_response(t) for t in texts]
    log_beta = [math.log((1 - cfg.eps) * p + cfg.eps * V ** -len(y)) for p, y in zip(p_expert, responses)]
    return [prompt] * 3, responses, torch.tensor(log_beta)


def test_oracle_reward_is_log_beta_minus_log_pi(world):
    prompts, responses, log_beta = oracle_case(world)
    log_pi = torch.tensor([-3.0, -1.0, -0.5])   # the policy prefers the off-support response
    reward = afd_mini.oracle_reward(world, prompts, responses, log_pi)
    torch.testing.assert_close(reward, log_beta - log_pi, atol=1e-4, rtol=0)
    assert reward[0] > reward[1] > reward[2], "the oracle should reward the expert's likely responses most"


@pytest.mark.parametrize("method", ["rkl_oracle", "js_oracle"])
def test_stage_oracle_rewards_a_rollout_with_log_beta_minus_its_log_pi(world, monkeypatch, method):
    """The reward stage_oracle hands to the policy loop, on a hand-made Rollout: log π(y|x) is the sum of the
    per-token log-probs the loop hands it over the response (−0.5 a token here), log β the world's; the exact
    discriminator's logit h = log β − log π, as is (rkl_oracle) or as GAIL's −log(1 − σ(h)) (js_oracle)."""
    loop = {}
    monkeypatch.setattr(afd_mini, "policy_optimisation", lambda run, stage, reward_fn, *a, **k: loop.update(
        stage=stage, reward_fn=reward_fn, disc=a or k))
    afd_mini.stage_oracle(SimpleNamespace(world=world), method)
    assert loop["stage"] == method and not loop["disc"]
    prompts, responses, log_beta = oracle_case(world)
    tokens, mask = to_batch([p.tokens for p in prompts], responses, world.eos_id, "cpu")
    pi_logp = torch.where(mask, -0.5, 0.0)   # per-token log-probs are 0 off the response
    roll = Rollout(tokens=tokens, response_mask=mask, logprobs=torch.zeros(tokens.shape))
    reward = loop["reward_fn"](prompts, roll, pi_logp)
    h = log_beta - torch.tensor([-0.5 * len(y) for y in responses])
    torch.testing.assert_close(reward, h if method == "rkl_oracle" else -torch.log1p(-torch.sigmoid(h)),
                               atol=1e-4, rtol=0)


# -----------------------------------------------------------------------------
# the KLs that stage_evaluate reports

def test_policy_kls_match_enumeration_on_hand_made_policies():
    """Two distributions over four responses, and "samples" that are copies of each response in exact
    proportion (8 of β, 16 of π): the Monte Carlo means are then the expectations, so the pipeline's estimate
    must equal the KL computed by enumeration, both ways."""
    beta = [0.5, 0.25, 0.125, 0.125]
    pi = [0.0625, 0.1875, 0.25, 0.5]
    forward = sum(b * math.log(b / p) for b, p in zip(beta, pi))    # KL(β ‖ π)
    reverse = sum(p * math.log(p / b) for b, p in zip(beta, pi))    # KL(π ‖ β)
    assert abs(forward - reverse) > 0.1, "test has no teeth: KL(β‖π) == KL(π‖β) here"
    log_beta, log_pi = torch.tensor(beta).log(), torch.tensor(pi).log()
    expert = torch.repeat_interleave(torch.arange(4), torch.tensor([4, 2, 1, 1]))   # y ~ β
    own = torch.repeat_interleave(torch.arange(4), torch.tensor([1, 3, 4, 8]))      # y ~ π
    got = evaluation.policy_kls(on_expert=common.Scored(None, log_pi=log_pi[expert], log_beta=log_beta[expert]),
                              own=common.Scored(None, log_pi=log_pi[own], log_beta=log_beta[own]))
    assert got == pytest.approx((forward, reverse), abs=1e-6)


# -----------------------------------------------------------------------------
# describe: mode frequencies, off-support, entropy, diversity

def test_describe_hand_made_responses(world):
    rev = world.make_prompt("reverse", "ABCD", "DCBA")
    add = world.make_prompt("add", "37+48", "85")
    sample = [(rev, "DCBA", "terse", 1.0),
              (rev, "DCBA", "terse", 1.0),                    # the same response again
              (rev, "the answer is DCBE.", "sentence", 0.375),   # a slip: on the support, half of 3/4 right
              (rev, "answer: DCBA", "off", 1.0),               # a base style: off the support, yet right
              (add, "7+8=15, 3+4+1=8. so the answer is 85.", "steps", 1.0),
              (add, "85", "terse", 1.0)]
    prompts = [p for p, *_ in sample]
    responses = [world.encode_response(t) for _, t, *_ in sample]
    assert [world.mode(p, y) for p, y in zip(prompts, responses)] == [m for *_, m, _ in sample]
    stats = evaluation.describe(world, prompts, responses)
    assert stats["off_support"] == pytest.approx(1 / 6)
    assert stats["mode_freq"] == pytest.approx({"terse": 3 / 6, "sentence": 1 / 6, "steps": 1 / 6})
    on = [3 / 5, 1 / 5, 1 / 5]   # the five on-support responses
    assert stats["mode_entropy"] == pytest.approx(-sum(f * math.log(f) for f in on))
    assert stats["distinct"] == pytest.approx((3 / 4 + 2 / 2) / 2)   # per prompt, then averaged
    assert stats["gold_reward"] == pytest.approx((5 + 0.375) / 6)
    assert stats["length"] == pytest.approx(sum(map(len, responses)) / 6)
    off = evaluation.describe(world, [rev], [world.encode_response("answer: DCBA")])
    assert off["off_support"] == 1 and off["mode_entropy"] == 0


# -----------------------------------------------------------------------------
# Best-of-N

def test_best_of_n_curve_against_brute_force():
    M, N = 3, 8
    g = torch.Generator().manual_seed(0)
    reward = torch.randint(0, 4, (M * N,), generator=g).float()   # few values: many ties
    gold = torch.rand(M * N, generator=g)
    picks = {"off_support": (torch.rand(M * N, generator=g) < 0.5), "length": torch.randint(2, 30, (M * N,),
                                                                                                  generator=g)}
    logp = -torch.randint(0, 6, (M * N,), generator=g).float()   # π_SFT's log-probs, with ties too
    for tau in [math.inf, 1.0, 0.0]:
        res = afd_mini.best_of_n_curve(reward, gold, picks, N, logp, tau)
        assert res["n"] == [1, 2, 4, 8]
        if tau == math.inf:
            assert res["kl"] == pytest.approx([afd_mini.obj.best_of_n_kl(n) for n in (1, 2, 4, 8)])
        else:
            assert "kl" not in res, "the constrained choice has no analytic KL"
        for i, n in enumerate(res["n"]):
            chosen = []
            for start in range(0, M * N, n):   # consecutive samples of one prompt, N/n draws per prompt
                top = max(logp[start:start + n].tolist())
                best = None
                for j in range(start, start + n):
                    if logp[j] >= top - tau and (best is None or reward[j] > reward[best]):   # first of equals
                        best = j
                chosen.append(best)
            for key, values in [("gold_reward", gold), *picks.items()]:
                assert res[key][i] == pytest.approx(np.mean([float(values[j]) for j in chosen]), abs=1e-6), (tau, n)


def test_best_of_n_pick_statistics_hand_count():
    """Two prompts, four candidates each: the picks' statistics counted by hand."""
    reward = torch.tensor([0.0, 3.0, 1.0, 2.0, 5.0, 4.0, 4.0, 0.0])
    gold = torch.tensor([0.0, 1.0, 0.5, 0.0, 0.25, 1.0, 1.0, 0.0])
    picks = {"off_support": torch.tensor([0, 1, 0, 0, 1, 0, 0, 0]), "length": torch.tensor([4, 9, 5, 6, 12, 3, 3, 8]),
             "signature": torch.tensor([0, 1, 1, 0, 1, 0, 1, 0])}
    logp = torch.tensor([-1.0, -6.0, -1.5, -2.0, -9.0, -1.0, -1.0, -2.0])
    res = afd_mini.best_of_n_curve(reward, gold, picks, 4)
    # N = 4: prompt 1 picks candidate 1 (reward 3), prompt 2 candidate 4 (reward 5)
    assert (res["gold_reward"][2], res["off_support"][2], res["length"][2], res["signature"][2]) == (0.625, 1, 10.5, 1)
    # N = 2: pairs (0, 1), (2, 3), (4, 5), (6, 7) pick 1, 3, 4, 6
    assert res["length"][1] == (9 + 6 + 12 + 3) / 4 and res["off_support"][1] == 0.5
    # among the plausible (within τ = 1 nat of the likeliest, the floor included): prompt 1 keeps 0, 2, 3 and picks
    # 3 (reward 2); prompt 2 keeps 5, 6, 7 and picks 5 (reward 4, the first of a tie)
    res = afd_mini.best_of_n_curve(reward, gold, picks, 4, logp, 1.0)
    assert (res["gold_reward"][2], res["off_support"][2], res["length"][2], res["signature"][2]) == (0.5, 0, 4.5, 0)


def test_stage_best_of_n_ranks_by_the_exact_optima(world, monkeypatch):
    """The exact optima stage_best_of_n ranks with, on its own samples: Init-SFT's log π_SFT(y|x) − log π_init(y|x)
    (classifier_optimum's arguments in that order), Init-Demo's log β − log π_init, SFT-Demo's log β − log π_SFT,
    with log π computed here by a plain forward pass of each unpadded row and log β by the world.
    best_of_n_curve (tested above) is replaced by a recorder, whose return value tells which call was which."""
    calls = []
    monkeypatch.setattr(afd_mini, "best_of_n_curve", lambda reward, gold, picks, N, logp=None, tau=math.inf:
                        calls.append((reward, logp, tau)) or len(calls) - 1)
    config = GPTConfig(block_size=96, vocab_size=world.vocab_size, n_layer=1, n_head=1, n_embd=16)
    torch.manual_seed(0)
    models = {"pretrain": (GPT(config), {}), "sft": (spread(GPT(config), seed=4), {}),
              **{f"rm_{name}": (ScalarGPT(config), {"form": "scalar", "base": "pretrain"})
                 for name in afd_mini.LEARNED}}

    class BonRun:   # what stage_best_of_n asks of a Run; it records what it samples
        autocast = afd_mini.Run.autocast
        rollout, batch, bar, sample_pairs = afd_mini.Run.rollout, afd_mini.Run.batch, afd_mini.Run.bar, \
            afd_mini.Run.sample_pairs

        def __init__(self):
            self.cfg = dataclasses.replace(afd_mini.Config(), bon_prompts=2, bon_max_n=4, progress=False)
            self.seed, self.device, self.world, self.sampled, self.control = 0, torch.device("cpu"), world, [], False
            self.data = {"eval_prompts": world.sample_prompts(2, np.random.default_rng(0))}
            self.demo_prompts = self.data["eval_prompts"]
            self.demos = [(p.tokens, world.encode_response(p.answer)) for p in self.demo_prompts]

        def load(self, name):
            return models[name]

        def sample_responses(self, model, prompts, seed):
            self.sampled.append((prompts, afd_mini.Run.sample_responses(self, model, prompts, seed)))
            return self.sampled[-1][1]

    run = BonRun()
    extra = afd_mini.stage_best_of_n(run)
    (prompts, responses), = run.sampled

    def logp(model, p, r):
        with torch.no_grad():
            logits = model(torch.tensor([p + r]))[0][0, len(p) - 1:-1]
        return F.log_softmax(logits, dim=-1).gather(-1, torch.tensor(r)[:, None]).sum().item()

    log_init = torch.tensor([logp(models["pretrain"][0], p, r) for p, r in zip(prompts, responses)])
    log_sft = torch.tensor([logp(models["sft"][0], p, r) for p, r in zip(prompts, responses)])
    flat = [p for p in run.data["eval_prompts"] for _ in range(4)]
    log_beta = torch.tensor(world.expert_logprobs(flat, responses), dtype=torch.float32)
    assert (log_sft - log_init).abs().min() > 1e-3, "test has no teeth: π_SFT and π_init agree on a sample"
    expected = {"init_sft_optimum": log_sft - log_init, "init_demo_optimum": log_beta - log_init,
                "sft_demo_optimum": log_beta - log_sft, "sft_likelihood": log_sft,
                **{f"init_sft_optimum_g{g:g}": log_sft - g * log_init for g in methods.GAMMAS},
                # learned: log q_φ − γ log π_init from the learned log q_φ − log π_init
                **{f"init_sft_g{g:g}": calls[extra["bon"]["init_sft"]][0] + (1 - g) * log_init for g in methods.GAMMAS}}
    for name, want in expected.items():
        torch.testing.assert_close(calls[extra["bon"][name]][0], want, atol=1e-4, rtol=0, msg=name)
        assert calls[extra["bon"][name]][2] == math.inf, f"{name}: unconstrained Best-of-N"
    for name, (reward, plausible_logp, tau) in ((n, calls[i]) for n, i in extra["bon_plausible"].items()):
        torch.testing.assert_close(plausible_logp, log_sft, atol=1e-4, rtol=0, msg=f"{name}: plausible by log π_SFT")
        assert tau == run.cfg.bon_plausibility and reward is calls[extra["bon"][name]][0]
    assert set(extra["bon_plausible"]) == set(extra["bon"]) - {"gold", "sft_likelihood"}


# -----------------------------------------------------------------------------
# the policy-gradient loop, end to end on a tiny model

class TinyRun:
    """What policy_optimisation asks of a Run, around tiny GPTs: load("sft") hands out `models` in turn (the
    policy and the reference; `loaded` records which was which)."""
    autocast = afd_mini.Run.autocast
    rollout, batch, bar = afd_mini.Run.rollout, afd_mini.Run.batch, afd_mini.Run.bar   # the pipeline's own

    def save(self, name, model, **extra):   # the model the loop trained
        self.saved = model

    def __init__(self, models, prompt, **cfg):
        self.models, self.loaded, self.seed, self.device = list(models), [], 0, torch.device("cpu")
        self.cfg = dataclasses.replace(afd_mini.Config(), progress=False, **cfg)
        self.rng = np.random.default_rng(0)
        self.world = SimpleNamespace(eos_id=0)
        self.demos = [(prompt, [3, 0])] * 4
        self.demo_prompts = [SimpleNamespace(tokens=prompt)] * 4

    def load(self, name):
        assert name == "sft"
        self.loaded.append(self.models[len(self.loaded)])
        return self.loaded[-1], {}


def first_token_logp(model, prompt):
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([prompt]))[0][0, -1].double(), dim=-1)


def first_token_prob(model, prompt, token):
    return first_token_logp(model, prompt)[token].exp().item()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_policy_optimisation_follows_the_reward(sign):
    """Reward ±1 when the response starts with token 3: the loop must raise its probability for +1 and lower
    it for −1 (exact probabilities from a forward pass, before and after; kl_coef = 0 so that only the reward
    acts)."""
    prompt, target = [1, 2], 3
    model = tiny(GPT, vocab=8)
    run = TinyRun([model, copy.deepcopy(model)], prompt, max_new_tokens=6, rl_iters=6, rl_prompts=4, group_size=4,
                  ppo_epochs=2, pg_lr=1e-2, kl_coef=0.0)

    def reward_fn(prompts, roll, pi_logp):
        return sign * (roll.tokens[:, len(prompt)] == target).float()

    before = first_token_prob(model, prompt, target)
    afd_mini.policy_optimisation(run, "test", reward_fn)
    policy = run.saved
    after = first_token_prob(policy, prompt, target)
    assert (after - before) * sign > 0, f"reward {sign:+} for token {target}: P went from {before:.3f} to {after:.3f}"


def spread(model, seed):
    """Larger random weights than GPT-2's init, so that two models' next-token distributions differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_policy_optimisation_kl_penalty_pulls_towards_the_reference():
    """Zero reward, kl_coef = 1, one-token responses: the loop then minimises KL(π ‖ π_ref) of the first token
    alone, which is computed here exactly, before and after. A flipped penalty (a sign in
    kl_shaped_advantages, or kl_k1's arguments swapped in the loop) would push π away from π_ref instead."""
    prompt = [1, 2]
    models = [spread(tiny(GPT, vocab=8), seed) for seed in (1, 2)]

    def kl(i):   # KL(models[i] ‖ the other one), first token
        logp, logq = first_token_logp(models[i], prompt), first_token_logp(models[1 - i], prompt)
        return (logp.exp() * (logp - logq)).sum().item()

    before = [kl(0), kl(1)]
    run = TinyRun(models, prompt, max_new_tokens=1, rl_iters=6, rl_prompts=4, group_size=4, ppo_epochs=2,
                  pg_lr=1e-2, kl_coef=1.0)
    afd_mini.policy_optimisation(run, "test", lambda prompts, roll, pi_logp: torch.zeros(roll.tokens.size(0)))
    i = run.loaded.index(run.saved)   # the model the loop trained; the other is its reference
    assert kl(i) < before[i], f"KL(π ‖ π_ref) of the first token went from {before[i]:.4f} to {kl(i):.4f}"


def test_kl_shaped_advantages_flat_groups_make_no_update():
    """A group whose advantages are only rounding (a reward 0 everywhere, the KL penalty 0 at π = π_ref) gets
    exactly 0, not whitened up to full size; a group with a real spread is whitened as before."""
    mask = torch.ones(6, 2, dtype=torch.bool)
    reward = torch.tensor([3e-8, -2e-8, 1e-8, 1.0, 0.0, 2.0])       # group 1: rounding; group 2: a real signal
    adv = obj.kl_shaped_advantages(reward, torch.zeros(6, 2), mask, kl_coef=0.05, group_size=3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    raw = obj.kl_shaped_advantages(reward, torch.zeros(6, 2), mask, kl_coef=0.05, group_size=3, whiten=False)
    torch.testing.assert_close(adv[3:], raw[3:] / raw.masked_fill(torch.arange(6) < 3, 0).std())
    # every group flat: all zero (before, rounding alone was whitened to a spread of 1)
    tiny = obj.kl_shaped_advantages(reward[:3], torch.full((3, 2), 1e-9), mask[:3], kl_coef=0.05, group_size=3)
    assert tiny.abs().max().item() == 0.0
    # token rewards: the same per group
    tok = obj.kl_shaped_advantages(torch.zeros(6, 2), torch.full((6, 2), 1e-8), mask, kl_coef=0.05, group_size=3)
    assert tok.abs().max().item() == 0.0


def test_policy_optimisation_with_an_uninformative_reward_at_the_reference_does_not_move():
    """Reward 0 and π = π_ref at the start: every advantage is rounding, so no step is taken and the policy stays
    π_ref exactly (pg_frozen's case). Before flat groups made no update, whitening and Adam turned the rounding
    into full-size steps in a random direction."""
    prompt = [1, 2]
    model = spread(tiny(GPT, vocab=8), 1)
    run = TinyRun([model, copy.deepcopy(model)], prompt, max_new_tokens=3, rl_iters=4, rl_prompts=4, group_size=4,
                  ppo_epochs=2, pg_lr=1e-2, kl_coef=0.05)
    before = copy.deepcopy(model.state_dict())
    extra = afd_mini.policy_optimisation(run, "test", lambda prompts, roll, pi_logp: torch.zeros(roll.tokens.size(0)))
    assert extra["curve"]["steps_taken"] == 0
    assert all(torch.equal(before[k], v) for k, v in run.saved.state_dict().items())


def test_stage_rl_init_sft_uses_the_reward_models_own_kl_weight(monkeypatch, tmp_path):
    """RL on the Init-SFT reward model runs with --rm_kl_coef, not the adversarial runs' --kl_coef (with 0.05 it
    exploits the unbounded log-ratio: README, sensitivity), and its reward is the reward model's logit."""
    loop = {}
    monkeypatch.setattr(afd_mini, "policy_optimisation", lambda run, stage, reward_fn, disc=None, kl_coef=None:
                        loop.update(stage=stage, reward_fn=reward_fn, kl_coef=kl_coef) or (None, {}))
    monkeypatch.setattr(afd_mini, "load_reward_model", lambda run, name: loop.update(rm=name) or
                        (lambda tokens, mask: mask.sum(-1).float()))
    run = SimpleNamespace(cfg=dataclasses.replace(afd_mini.Config(), kl_coef=0.05, rm_kl_coef=0.7),
                          autocast=contextlib.nullcontext,
                          device=torch.device("cpu"))
    afd_mini.stage_rl_init_sft(run)
    assert loop["stage"] == "rl_init_sft" and loop["rm"] == "init_sft" and loop["kl_coef"] == 0.7
    tokens, mask = to_batch([[1], [2]], [[3, 0], [4, 4, 0]], 0, "cpu")
    roll = Rollout(tokens=tokens, response_mask=mask, logprobs=torch.zeros(tokens.shape))
    assert loop["reward_fn"](None, roll, None).tolist() == [2.0, 3.0]


# -----------------------------------------------------------------------------
# stage_evaluate: every log-probability beside the sample it belongs to

def test_stage_evaluate_scores_each_sample_with_its_own_log_probabilities(world, monkeypatch):
    """stage_evaluate on hand-made policies (tiny random GPTs over the world's tokens) and the real world: the
    forward KL is the mean of log β − log π over the EXPERT's samples, the reverse KL the mean of log π − log β
    over the POLICY's own samples, and KL(π ‖ π_SFT) the mean of log π − log π_SFT over the policy's samples; log π
    by a plain forward pass of each row here, log β by the world. The extrapolated policy π_α is made from π_SFT
    and π_init in that order: its log π is log_softmax((1 + α) log π_SFT − α log π_init) at each token. Every swap
    of a log-probability between the two samples (the policy's log-probs of its own samples where those of the
    expert's belong, β's of one sample with π's of the other) or of π_SFT with π_init changes a number this test
    checks: it asserts that each swap would."""
    policy, sft, init = (spread(GPT(GPTConfig(block_size=96, vocab_size=world.vocab_size, n_layer=1, n_head=1,
                                              n_embd=16)), seed) for seed in (7, 8, 9))
    alpha = methods.ALPHAS[0]
    monkeypatch.setattr(afd_mini, "POLICIES", [afd_mini.POLICY["expert"], afd_mini.POLICY["rkl_oracle"],
                                               afd_mini.POLICY[f"extrapolated_{alpha:g}"]])

    class EvalRun:   # what stage_evaluate asks of a Run; it records what it samples
        autocast = afd_mini.Run.autocast
        rollout, batch, bar = afd_mini.Run.rollout, afd_mini.Run.batch, afd_mini.Run.bar

        def __init__(self):
            self.cfg = dataclasses.replace(afd_mini.Config(), eval_samples=2, progress=False)
            self.seed, self.device, self.world, self.sampled = 0, torch.device("cpu"), world, []
            self.data = {"eval_prompts": world.sample_prompts(6, np.random.default_rng(1))}

        def load(self, name):
            return {"rkl_oracle": policy, "sft": sft, "pretrain": init}[name], {}

        def sample_responses(self, model, prompts, seed):
            self.sampled.append(afd_mini.Run.sample_responses(self, model, prompts, seed))
            return self.sampled[-1]

    run = EvalRun()
    result = afd_mini.stage_evaluate(run)["policies"]
    prompts = [p for p in run.data["eval_prompts"] for _ in range(2)]
    rng = np.random.default_rng(run.seed + afd_mini.EXPERT_SAMPLES_SEED)   # the stage's expert samples, again
    expert = [world.encode_response(world.expert_response(p, rng)) for p in prompts]

    def logits(model, p, r):
        with torch.no_grad():
            return F.log_softmax(model(torch.tensor([p.tokens + r]))[0][0, len(p.tokens) - 1:-1].double(), dim=-1)

    def logp(model, p, r, a=None):   # a: the extrapolated policy of sft and init
        lp = logits(model, p, r) if a is None else \
            F.log_softmax((1 + a) * logits(sft, p, r) - a * logits(init, p, r), dim=-1)
        return lp.gather(-1, torch.tensor(r)[:, None]).sum().item()

    beta_expert = world.expert_logprobs(prompts, expert)
    checked = []
    for name, own, model, a in [("rkl_oracle", run.sampled[0], policy, None),
                                (f"extrapolated_{alpha:g}", run.sampled[1], None, alpha)]:
        pi_expert, pi_own = (np.array([logp(model, p, r, a) for p, r in zip(prompts, y)]) for y in (expert, own))
        sft_own = np.array([logp(sft, p, r) for p, r in zip(prompts, own)])
        beta_own = world.expert_logprobs(prompts, own)
        forward, reverse = np.mean(beta_expert - pi_expert), np.mean(pi_own - beta_own)
        got = result[name]
        sampled = got["sampled"]   # the Monte Carlo estimates, kept beside the exact ones
        assert sampled["forward_kl"] == pytest.approx(forward, abs=1e-3), name
        assert sampled["reverse_kl"] == pytest.approx(reverse, abs=1e-3), name
        assert got["kl_sft"] == pytest.approx(np.mean(pi_own - sft_own), abs=1e-3), name
        assert sampled["gold_reward"] == pytest.approx(np.mean(world.gold_rewards(prompts, own))), name
        # the exact ones, by summing over every prompt's support here (World.support), one row at a time
        eval_prompts = run.data["eval_prompts"]
        on_mass, on_rkl = [], []
        for p in eval_prompts:
            ys = [world.encode_response(t) for t, _, _ in world.support(p)]
            lp = np.array([logp(model, p, y, a) for y in ys])
            lb = world.expert_logprobs([p] * len(ys), ys)
            on_mass.append(np.exp(lp).sum())
            on_rkl.append((np.exp(lp) * (lp - lb)).sum())
        assert got["off_support"] == pytest.approx(1 - np.mean(on_mass), abs=1e-6), name
        assert got["reverse_kl_support"] == pytest.approx(np.mean(on_rkl), abs=1e-4), name
        off = np.array([m == "off" for m in world.modes(prompts, own)])
        assert got["reverse_kl"] == pytest.approx(np.mean(on_rkl) + got["off_support"] * np.mean(
            (pi_own - beta_own)[off]), rel=1e-4), name
        swaps = {"π's own log-probs for the expert's": np.mean(beta_expert - pi_own),
                 "β of the policy's samples in the forward KL": np.mean(beta_own - pi_expert),
                 "π of the expert's samples in the reverse KL": np.mean(pi_expert - beta_own),
                 "β of the expert's samples in the reverse KL": np.mean(pi_own - beta_expert),
                 "log π_SFT of the expert's samples": np.mean(pi_own - np.array([logp(sft, p, r)
                                                                                  for p, r in zip(prompts, expert)]))}
        if a is not None:   # π_init and π_SFT swapped in the extrapolated policy
            swapped = lambda q, r: F.log_softmax((1 + a) * logits(init, q, r) - a * logits(sft, q, r), dim=-1)
            swaps["π_init for π_SFT in π_α"] = np.mean(beta_expert - np.array(
                [swapped(q, r).gather(-1, torch.tensor(r)[:, None]).sum().item() for q, r in zip(prompts, expert)]))
        for what, value in swaps.items():   # the test has teeth: each swap would move a checked number
            assert min(abs(value - x) for x in (forward, reverse, got["kl_sft"])) > 0.1, (name, what)
        checked.append(name)
    assert result["expert"]["forward_kl"] == result["expert"]["reverse_kl"] == 0.0   # β against itself
    assert result["expert"]["sampled"]["forward_kl"] == result["expert"]["sampled"]["reverse_kl"] == 0.0
    assert checked == ["rkl_oracle", f"extrapolated_{alpha:g}"]


def test_a_stage_is_seeded_by_its_name_not_its_place(monkeypatch):
    """A stage's random draws depend on the seed and its name only: a stage added in front of it (as adding a
    method does) reseeds nothing else. The control world's stages draw what their main-world twins draw."""
    def draws(name, seed=0):
        run = SimpleNamespace(seed=seed)
        afd_mini.Run.begin(run, name)
        return run.rng.integers(1 << 30, size=4).tolist(), torch.randint(1 << 30, (4,)).tolist()

    before = {name: draws(name) for name in ["sft", "rkl_seq", "evaluate", "control_sft"]}
    monkeypatch.setattr(afd_mini, "STAGES", [afd_mini.runner.Stage("new", None, (), (), ())] + afd_mini.STAGES)
    assert {name: draws(name) for name in before} == before
    assert before["sft"] != before["rkl_seq"] and draws("sft", seed=1) != before["sft"]
    assert before["control_sft"] == before["sft"]


# -----------------------------------------------------------------------------
# DPO and SPIN

def test_stage_dpo_trains_pi_sft_on_the_preference_pairs_with_pi_sft_as_reference(world, monkeypatch):
    trained = {}
    monkeypatch.setattr(afd_mini, "dpo_training", lambda run, policy, ref, chosen, rejected, desc, lr, kl_coef:
                        trained.update(policy=policy, ref=ref, chosen=chosen, rejected=rejected, lr=lr,
                                       kl_coef=kl_coef) or {})
    models = [spread(tiny(GPT, vocab=world.vocab_size), seed) for seed in (1, 2)]
    pref = [(p, f"the answer is {p.answer}.", "answer: X") for p in world.sample_prompts(5, np.random.default_rng(0))]
    cfg = dataclasses.replace(afd_mini.Config(), dpo_lr=1e-3, dpo_kl_coef=0.3, spin_lr=1e-6, spin_kl_coef=2.0)
    run = SimpleNamespace(world=world, data={"pref": pref}, load=lambda name: (models.pop(0), {}), cfg=cfg,
                          save=lambda name, model, **extra: trained.update(saved=(name, model)),
                          probe=lambda model: trained.update(probed=model))
    result = afd_mini.stage_dpo(run)
    assert (trained["lr"], trained["kl_coef"]) == (1e-3, 0.3), "DPO's own learning rate and λ, not SPIN's"
    # what the pairs can teach: none tied on gold (right answer vs a wrong one); half the responses off-support
    assert result["pairs"] == {"tied": 0.0, "off_support": 0.5}
    assert trained["probed"] is trained["ref"], "probe_start measures π_SFT, the reference"
    enc = world.encode_response
    assert trained["chosen"] == [(p.tokens, enc(c)) for p, c, _ in pref], "chosen: the preferred response"
    assert trained["rejected"] == [(p.tokens, enc(r)) for p, _, r in pref], "rejected: the other one"
    assert trained["saved"] == ("dpo", trained["policy"]) and trained["ref"] is not trained["policy"]
    assert not any(p.requires_grad for p in trained["ref"].parameters()), "the reference is frozen"
    run.data["pref"] = [(p, c, c) for p, c, _ in pref[:2]] + pref[2:]   # two pairs of one response twice: tied
    models += [spread(tiny(GPT, vocab=world.vocab_size), seed) for seed in (1, 2)]
    assert afd_mini.stage_dpo(run)["pairs"] == {"tied": 0.4, "off_support": 0.3}


def test_stage_spin_pairs_each_demonstration_with_the_current_iterates_own_sample(monkeypatch):
    """SPIN's iteration t: chosen = the demonstrations, rejected = a sample of the CURRENT iterate π_t for the same
    prompt, reference π_t. The stub trainer moves the policy's weights by 1 per iteration, and the stub sampler
    tags each response with the weights of the model that drew it and the prompt it answers: iteration 2 must
    sample from the policy after iteration 1 (a stale π_SFT fails), and chosen and rejected must not swap."""
    iterations = []

    def fake_training(run, policy, ref, chosen, rejected, desc, lr, kl_coef):
        assert (lr, kl_coef) == (1e-6, 2.0), "SPIN's own learning rate and λ, not DPO's"
        iterations.append(dict(policy=policy, ref_weight=ref.lm_head.weight[0, 0].item(), chosen=chosen,
                               rejected=rejected))
        with torch.no_grad():
            policy.lm_head.weight.add_(1.0)   # "training"
        return {}

    monkeypatch.setattr(afd_mini, "dpo_training", fake_training)
    sft = tiny(GPT, vocab=8)
    w0 = sft.lm_head.weight[0, 0].item()

    class SpinRun:
        cfg = dataclasses.replace(afd_mini.Config(), spin_iters=2, spin_lr=1e-6, spin_kl_coef=2.0, dpo_lr=1e-3)
        seed, demos = 0, [([1, k], [3, k, 0]) for k in range(5)]
        loaded = []

        def load(self, name):
            self.loaded.append(name)
            return copy.deepcopy(sft), {}

        def probe(self, model):   # before the first iteration: the starting point's weights
            return {"weight": model.lm_head.weight[0, 0].item() - w0}

        def sample_pairs(self, model, prompts, seed):
            return [(p, ["drawn by", round(model.lm_head.weight[0, 0].item() - w0), p[1]]) for p in prompts]

        def save(self, name, model, **extra):
            self.saved = (name, model)

    run = SpinRun()
    result = afd_mini.stage_spin(run)
    assert len(iterations) == 2 and run.saved == ("spin", iterations[0]["policy"])
    assert run.loaded == ["sft"] and result["probe_start"] == {"weight": 0.0}
    for t, it in enumerate(iterations):
        assert it["chosen"] == run.demos, f"iteration {t + 1}: chosen must be the demonstrations"
        assert [p for p, _ in it["rejected"]] == [p for p, _ in run.demos], "rejected: the same prompts, in order"
        assert all(r[1] == t and r[2] == p[1] for p, r in it["rejected"]), \
            f"iteration {t + 1}: rejected must be drawn by π_{t} (the current iterate) for its own prompt"
        assert it["ref_weight"] - w0 == pytest.approx(t), f"iteration {t + 1}: the reference is π_{t}"
    afd_mini.stage_spin(run, start="sft_short", name="spin_short")   # SPIN from the under-trained π_SFT
    assert run.loaded[-1] == "sft_short" and run.saved[0] == "spin_short"


def test_dpo_training_raises_the_chosen_response_over_the_rejected_one():
    """One prompt, chosen response [3, 0], rejected [4, 0]: DPO's steps raise log π(chosen) − log π(rejected)
    above the reference's, which stays as it was."""
    model = tiny(GPT, vocab=8)
    ref = copy.deepcopy(model).requires_grad_(False)
    run = TinyRun([], [1, 2], dpo_steps=20, dpo_batch=4, dpo_lr=1e-2)
    chosen, rejected = [([1, 2], [3, 0])] * 4, [([1, 2], [4, 0])] * 4

    def margin(m):
        with torch.no_grad():
            lp = first_token_logp(m, [1, 2])
        return (lp[3] - lp[4]).item()

    before = margin(ref)
    run.probe = lambda m: {"probed": True}
    curve = afd_mini.dpo_training(run, model, ref, chosen, rejected, "test", 1e-2, 0.1)
    assert margin(model) > before + 0.5 and margin(ref) == before
    assert curve["loss"][-1] < curve["loss"][0] and curve["margin"][-1] > 0
    # likelihood displacement, measured: how far log π moved from the reference on every chosen and rejected
    # response, against a forward pass here
    def logp(m, response):   # log π(response | [1, 2]), token by token
        return sum(first_token_logp(m, [1, 2] + response[:t])[y].item() for t, y in enumerate(response))

    assert curve["displacement"]["chosen"] == pytest.approx(logp(model, [3, 0]) - logp(ref, [3, 0]), abs=1e-4)
    assert curve["displacement"]["rejected"] == pytest.approx(logp(model, [4, 0]) - logp(ref, [4, 0]), abs=1e-4)
    assert len(curve["chosen"]) == len(curve["rejected"]) == 20 and curve["probe"] == {"probed": True}
    assert curve["chosen"][0] == pytest.approx(0.0, abs=1e-5), "before the first step nothing has moved"


def test_probe_scores_the_expert_support_exactly(world):
    """Run.probe, what DPO and SPIN log as they train: the expert itself has forward KL 0 on its support and is off
    it only by its floor's ε; a tiny untrained GPT is almost entirely off it."""
    run = SimpleNamespace(world=world, data={"eval_prompts": world.sample_prompts(3, np.random.default_rng(1))},
                          cfg=dataclasses.replace(afd_mini.Config(), probe_prompts=2), device=torch.device("cpu"),
                          autocast=lambda: contextlib.nullcontext())
    support = afd_mini.Run.probe_support.func(run)
    assert support.n_prompts == 2
    run.probe_support = support
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=256, vocab_size=world.vocab_size, n_layer=1, n_head=1, n_embd=16))
    m = afd_mini.Run.probe(run, gpt)
    assert m["off_support"] > 0.99 and m["forward_kl_support"] > 10
    beta = evaluation.support_metrics(support, support.log_beta, world.mode_names)
    assert beta["forward_kl_support"] == pytest.approx(0, abs=1e-9)
    assert beta["off_support"] == pytest.approx(world.cfg.eps, rel=1e-3), "β's own off-support mass: the floor's ε"


@pytest.mark.parametrize("method, logged", [("fkl_iw_oracle", True), ("fkl_oracle", True), ("rkl_oracle", False)])
def test_forward_kl_policies_log_the_effective_sample_size_of_their_weights(method, logged, monkeypatch):
    """The forward-KL rewards weigh each sample by e^h: their curves carry the ESS of e^h per batch (as a fraction
    of the batch: Kish's (Σw)²/Σw²/n), computed from the h the reward was given; the others' do not."""
    hs = [torch.tensor([0.0, math.log(3.0)]), torch.tensor([1.0, 1.0])]
    monkeypatch.setattr(afd_mini, "oracle_reward", lambda world, prompts, responses, logp: hs.pop(0))

    def fake_loop(run, stage, reward_fn):
        roll = SimpleNamespace(responses=lambda: [], response_mask=torch.ones(2, 1, dtype=torch.bool))
        for _ in range(2):
            reward_fn([], roll, torch.zeros(2, 1))
        return {"curve": {}}
    monkeypatch.setattr(afd_mini, "policy_optimisation", fake_loop)
    curve = afd_mini.stage_oracle(SimpleNamespace(world=None), method)["curve"]
    if logged:
        assert curve["ess"] == pytest.approx([(1 + 3) ** 2 / (1 + 9) / 2, 1.0])
    else:
        assert "ess" not in curve
