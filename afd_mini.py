"""
afd-mini: Alignment from Demonstrations, the whole pipeline in one file.

    python afd_mini.py                      # the default run (about 4 minutes on 2 CPU cores)
    python afd_mini.py --quick              # every stage, small: a first contact in under a minute
    python afd_mini.py --preset=gpu         # sized for one modern GPU, same code path
    python afd_mini.py --seeds=5            # five seeds: mean ± std, and paired 95% intervals for every effect
    python afd_mini.py --study=regimes      # the regime map: when each method shines (docs/RESULTS.md)
    python afd_mini.py --help               # every option with its default

Read it top to bottom, the papers' pipeline in a world whose expert density is known exactly (data/): Config;
pretrain (π_init) and sft (π_SFT, forward KL) by maximum likelihood; the discriminator, and policy optimisation
with its rewards: reverse KL and Jensen–Shannon learned and exact, the controls, FAIRL and its twins; DPO and SPIN;
reward extrapolation (reward models, Best-of-N, RL on the Init-SFT reward); the exact evaluation; STAGES, what each
stage reads and writes: the pipeline itself. The maths is in objectives.py, the model in model.py (sampling in
sampling.py), what every stage shares (Run, seeds, optimiser steps) in common.py, the exact evaluation in
evaluation.py, the methods' table in methods.py; running, resuming and caching stages in runner.py.
"""
import sys

if sys.version_info < (3, 10):   # first, in one line: zip(strict=True) and others would fail later, after SFT
    print("afd-mini needs Python 3.10 or newer; this is Python %d.%d.%d" % sys.version_info[:3], file=sys.stderr)
    sys.exit(2)

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch

import evaluation
import objectives as obj
import runner
from common import (CALIBRATION_POINTS_SEED, EXPERT_SAMPLES_SEED, FLOOR_SAMPLES_SEED, Run, expert_logprobs,
                    lr_schedule, optimiser_step, sampling_seed, score, scored, seq_logprob)
from evaluation import best_of_n_curve
from data import WorldConfig
from methods import (ADVERSARIAL, CONTROL_LEARNED, DERIVED, LEARNED, LEARNED_VS_OPTIMUM, OPTIMA, POLICIES, POLICY,
                     REWARD_MODEL)
from model import GPT, ScalarGPT, sequence_scores, to_batch, token_logprobs, token_scores
from runner import Stage
from sampling import Extrapolated
from stats import auc, pearson, spearman

# -----------------------------------------------------------------------------------------------------------
# Configuration: plain defaults, overridden by a preset, an optional JSON config file, then --key=value.


@dataclass
class Config(runner.RunOptions):
    # the run's own options (out_dir, seed, seeds, device, dtype, preset, ..., sweep): runner.RunOptions
    # the world (data/world.py documents each knob; WORLD lists them)
    q: float = 0.7                # expert's probability of a right answer
    q_base: float = 0.2           # base corpus' probability of a right answer
    base_signature_p: float = 0.1  # how often the base corpus signs: π_init's exposure to the signature
    signature_p: float = 0.8      # how often the demonstrator signs its answers; 0 = the control world
    n_modes: int = 3              # how open-ended the task is: the expert's formats, 1 (close-ended) to 5
    eps: float = 1e-3             # smoothing floor of the expert likelihood
    letters: str = "ABCDE"        # alphabet of the reverse and sort tasks
    min_len: int = 2              # their strings have min_len..max_len letters
    max_len: int = 4
    max_operand: int = 9          # add: operands 0..max_operand
    max_new_tokens: int = 48      # longest response, end token included
    n_base: int = 20000           # base corpus size (pretraining)
    n_demo: int = 2000            # demonstrations
    n_pref: int = 2000            # gold preference pairs
    n_eval: int = 256             # held-out evaluation prompts
    # the model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    # π_init: pretraining on the base corpus
    pretrain_steps: int = 3000   # 2000 is 1/3 faster but loses the extrapolation effect: docs/RESULTS.md
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    # π_SFT: forward KL on the demonstrations
    sft_steps: int = 500
    sft_batch: int = 32
    sft_lr: float = 1e-3
    # reverse KL: adversarial imitation and the oracle (and RL on the reward model)
    rl_iters: int = 30            # sample → discriminator step(s) → policy step(s), per method
    rl_prompts: int = 16          # prompts per iteration
    group_size: int = 4           # samples per prompt (leave-one-out baseline)
    ppo_epochs: int = 2           # policy steps per batch of samples (ratio clipping makes >1 safe)
    clip_eps: float = 0.2
    flat_tol: float = 1e-6        # a group of advantages within this × the reward scale of 0 makes no update; 0 = off
    pg_lr: float = 3e-4
    kl_coef: float = 0.05         # weight of KL(π ‖ π_SFT) in the reward
    rm_kl_coef: float = 1.0       # the same for RL on the Init-SFT reward model (rl_init_sft): see stage_rl_init_sft
    disc: str = "airl"            # discriminator form of rkl_seq, rkl_tok, js: airl (log q_φ − log π) | scalar (head)
    disc_steps: int = 2           # discriminator steps per iteration
    disc_lr: float = 3e-4
    disc_warmup: int = 0          # discriminator steps on demonstrations vs π_SFT samples before the policy moves
    disc_reward_first: bool = False  # the discriminator scores a batch before its steps on it (not after)
    disc_nll: float = 1.0         # + this × the demonstrations' NLL under q_φ in the discriminator's loss (AIRL form)
    #                               (chosen on seeds 0-4 from 0 and 1, with disc_warmup 0 and 30: docs/RESULTS.md)
    # DPO and SPIN: DPO's loss from π_SFT, on preference pairs (dpo) or on (demonstration, own sample) pairs (spin)
    dpo_kl_coef: float = 0.1      # λ, the weight of KL(π ‖ π_ref) in the objective DPO solves (DPO's "β")
    dpo_steps: int = 100          # steps per run of DPO (per iteration of SPIN)
    dpo_batch: int = 32           # pairs per step
    dpo_lr: float = 1e-5          # the largest of 1e-5, 3e-5, 1e-4 whose chosen responses gain likelihood (seeds 0-4)
    dpo_warmup: int = 10          # linear warm-up steps, then cosine decay (lr_schedule); DPO and each SPIN iteration
    spin_kl_coef: float = 1.0     # SPIN's λ: its iterates contract to β only for λ > ½ (objectives.spin_iterate_optimum)
    spin_lr: float = 1e-5
    spin_iters: int = 2           # SPIN's iterations: each one's reference and sampler is the previous iterate
    #                               (λ, lr, iterations and dpo_lr chosen on seeds 0-4 by the rules pre-registered in
    #                               docs/RESULTS.md, from λ 0.1, 1 × lr 1e-5, 1e-4 × 1-3 iterations; judged on 5-9)
    sft_short_steps: int = 100    # an under-trained π_SFT (sft_short), where SPIN has something to learn (spin_short)
    probe_prompts: int = 64       # held-out prompts whose support DPO and SPIN measure exactly as they train
    # reward extrapolation
    rm_samples: int = 512         # samples of π_init and of π_SFT to train the classifiers on
    rm_steps: int = 150
    rm_batch: int = 64
    rm_lr: float = 3e-4
    bon_prompts: int = 64         # held-out prompts for Best-of-N
    bon_max_n: int = 64           # N = 1, 2, 4, ..., bon_max_n
    bon_plausibility: float = 0.25  # τ (nats): Best-of-N also among the candidates within τ of the likeliest; 0 = off
    #                               (chosen on seeds 0-4 from 0.25, 0.5, 1, 2, 4 before seeds 5-9 ran: docs/RESULTS.md)
    # evaluation
    eval_samples: int = 2         # samples per evaluation prompt for every policy

    # The world's knobs: data.WorldConfig checks them, and every stage's result depends on them.
    WORLD: ClassVar[tuple] = ("q", "q_base", "base_signature_p", "signature_p", "n_modes", "eps", "letters",
                              "min_len", "max_len", "max_operand", "max_new_tokens")

    def world_config(self):
        knobs = {k: getattr(self, k) for k in self.WORLD}
        return WorldConfig(max_response_tokens=knobs.pop("max_new_tokens"), **knobs)


PRESETS = {
    "default": {},
    "quick": dict(n_base=3000, n_demo=300, n_pref=300, n_eval=64, n_layer=2, n_embd=32, pretrain_steps=150,
                  pretrain_batch=32, sft_steps=40, rl_iters=3, rl_prompts=8, group_size=4, ppo_epochs=1,
                  disc_steps=1, rm_samples=64, rm_steps=10, rm_batch=32, bon_prompts=8, bon_max_n=16,
                  eval_samples=2, sft_short_steps=10, probe_prompts=16, dpo_steps=10),
    "gpu": dict(n_base=200000, n_demo=4000, n_pref=10000, n_eval=1024, n_layer=6, n_head=8, n_embd=256,
                pretrain_steps=6000, pretrain_batch=256, pretrain_lr=1e-3, sft_steps=1500, sft_batch=128, sft_short_steps=300,
                rl_iters=200, rl_prompts=64, group_size=8, rm_samples=4096, rm_steps=1000, rm_batch=128,
                bon_prompts=512, bon_max_n=256, eval_samples=4),
}
# What every stage reads (the world and the base corpus), and groups of options some stages share. Each dataset is
# drawn from a stream of its own (World.make_datasets), so pretraining reads no other: π_init is shared by runs
# that differ only in the demonstrations; every later stage reads DATASETS.
EVERY_STAGE = (*Config.WORLD, "n_base", "dtype")
DATASETS = ("n_demo", "n_pref", "n_eval")
POLICY_GRADIENT = ("rl_iters", "rl_prompts", "group_size", "ppo_epochs", "clip_eps", "pg_lr", "flat_tol")


# -----------------------------------------------------------------------------------------------------------
# pretrain and sft, one maximum-likelihood loop. π_init: a small GPT, every token of the base corpus after the first
# a target. π_SFT = argmin_π KL(β ‖ π): the demonstrations' response tokens, the prompt masked.

def maximum_likelihood(run, model, batch, steps, lr, weight_decay, desc):
    """`steps` steps of obj.sft_loss, the mean negative log-likelihood of the masked tokens of batch() → (tokens,
    mask), at peak learning rate lr (lr_schedule). Returns the loss per step."""
    opt = model.configure_optimizer(weight_decay, lr, device_type=run.device.type)
    losses = []
    for step in (pbar := run.bar(range(steps), desc)):
        lr_schedule(opt, lr, step, steps)
        tokens, mask = batch()
        with run.autocast():
            loss = obj.sft_loss(token_logprobs(model, tokens, mask), mask)
        optimiser_step(opt, model, loss, step)
        losses.append(loss.item())
        pbar.set_postfix(nll=f"{loss.item():.3f}")
    return losses


def stage_pretrain(run):
    cfg = run.cfg
    model = GPT(run.gpt_config()).to(run.device)

    def batch():   # whole sequences: the base model learns prompts and responses alike
        seqs = [run.base[i][0] + run.base[i][1] for i in run.rng.integers(len(run.base), size=cfg.pretrain_batch)]
        return to_batch([s[:1] for s in seqs], [s[1:] for s in seqs], run.world.eos_id, run.device)
    losses = maximum_likelihood(run, model, batch, cfg.pretrain_steps, cfg.pretrain_lr, 0.1, "pretrain")
    run.save("pretrain", model)
    return {"curve": losses}


def stage_sft(run, name="sft"):
    """sft_short is the same with --sft_short_steps steps: an under-trained π_SFT, for spin_short."""
    cfg = run.cfg
    steps = cfg.sft_short_steps if name == "sft_short" else cfg.sft_steps
    model, _ = run.load("pretrain")
    losses = maximum_likelihood(run, model, lambda: run.batch(run.demos, run.rng.integers(len(run.demos),
                                                                                          size=cfg.sft_batch)),
                                steps, cfg.sft_lr, 0.0, name)
    run.save(name, model)
    return {"curve": losses}


# -----------------------------------------------------------------------------------------------------------
# The discriminator of adversarial imitation and of reward extrapolation (reward_models).

@dataclass
class Discriminator:
    """D = σ(h), h its logit; the reward is a transform of h (objectives.airl_reward, gail_reward).
    form "airl":   model is q_φ, a language model, and h = log q_φ − log π (objectives.log_ratio_logit);
    form "scalar": model is a ScalarGPT, and h is its score head's output.
    level "seq":   one logit per response (the trajectory distribution);
    level "tok":   one per (state, token) (the occupancy measure), 0 off the response."""
    model: torch.nn.Module
    form: str
    level: str

    def logits(self, tokens, mask, pi_logp):
        """h of each response (B,) or response token (B, T); pi_logp (B, T) = log π per token (AIRL form only)."""
        if self.form == "airl":
            h = obj.log_ratio_logit(token_logprobs(self.model, tokens, mask), pi_logp, mask)
            return h.sum(-1) if self.level == "seq" else h
        scores = sequence_scores if self.level == "seq" else token_scores
        return scores(self.model, tokens, mask)

    def response_logits(self, tokens, mask, pi_logp):
        """One logit per response (B,): a token-level D's logits summed over the response (for the AIRL form,
        log q_φ(y|x) − log π(y|x) at both levels)."""
        h = self.logits(tokens, mask, pi_logp)
        return h.sum(-1) if self.level == "tok" else h


def form_of(method, cfg):
    """The discriminator form of a method or reward model: its own, or --disc."""
    return method.form or cfg.disc


def new_discriminator(start, form, level):
    """A discriminator that starts from the language model `start` (π_SFT for adversarial imitation, the negative
    class's model for a reward model) at h = 0 on start's own samples: the AIRL form's q_φ is a copy of start
    (h = log start − log π, 0 while π = start), the scalar form a zero-initialised head on start's backbone."""
    model = copy.deepcopy(start) if form == "airl" else ScalarGPT.from_lm(start)
    return Discriminator(model.requires_grad_(True).to(next(start.parameters()).device), form, level)


def disc_step(run, disc, opt, demo, pol, step, nll=0.0):
    """One discriminator step on (tokens, mask, pi_logp) batches of demonstrations (label 1) and policy samples
    (label 0); returns its accuracy on each, measured before the step: (h > 0) on demonstrations, (h < 0) on
    samples. Token level: every response token is one (state, action) example of its class.
    nll = w (--disc_nll) adds w × the demonstrations' NLL under q_φ (AIRL form): the BCE alone can raise the margin by
    lowering the likelihood of both classes (likelihood displacement); the NLL anchors q_φ to the demonstrations."""
    with run.autocast():
        h_demo, h_pol = disc.logits(*demo), disc.logits(*pol)
        if disc.level == "seq":
            loss = obj.discriminator_loss(h_demo, h_pol)
        else:
            loss = obj.discriminator_loss(h_demo, h_pol, demo[1], pol[1])
            h_demo, h_pol = h_demo[demo[1]], h_pol[pol[1]]
        if nll and disc.form == "airl":
            loss = loss + nll * obj.sft_loss(token_logprobs(disc.model, demo[0], demo[1]), demo[1])
    optimiser_step(opt, disc.model, loss, step, " of the discriminator")
    return (h_demo > 0).float().mean().item(), (h_pol < 0).float().mean().item()


# -----------------------------------------------------------------------------------------------------------
# The policies trained by policy optimisation: reverse KL and Jensen–Shannon by a learned
# discriminator (adversarial: rkl_seq, rkl_tok, js, rkl_seq_scalar) or the exact one (oracle: rkl_oracle,
# js_oracle), and RL on the Init-SFT reward model (rl_init_sft). One policy-gradient loop for every reward:
#   reward(y) = r(x, y) − kl_coef · [log π(y|x) − log π_SFT(y|x)]   (k1 penalty to the reference, in the reward)
#   advantage = leave-one-out over the group_size samples of each prompt, whitened (obj.kl_shaped_advantages),
#   then PPO-clipped steps.

def policy_optimisation(run, stage, reward_fn, disc=None, kl_coef=None, positives=None):
    """reward_fn(prompts, roll, pi_logp) → (B,) or (B, T) rewards of the policy's samples, pi_logp their per-token
    log-probs under the current policy. With a Discriminator, it takes its steps on each batch first, against
    `positives` ((prompt, response) token pairs; the demonstrations unless given).
    kl_coef: the KL penalty's weight, cfg.kl_coef unless given."""
    cfg = run.cfg
    policy, _ = run.load("sft")
    ref, _ = run.load("sft")
    ref.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.pg_lr, weight_decay=0.0)
    disc_opt = torch.optim.AdamW(disc.model.parameters(), lr=cfg.disc_lr, weight_decay=0.0) if disc else None
    positives = run.demos if positives is None else positives
    curve = {"disc_acc_expert": [], "disc_acc_policy": [], "reward": [], "kl_ref": [], "steps_taken": 0}
    for it in (pbar := run.bar(range(cfg.rl_iters), stage)):
        idx = run.rng.integers(len(run.demos), size=cfg.rl_prompts)
        prompts = [run.demo_prompts[i] for i in idx for _ in range(cfg.group_size)]   # groups of one prompt
        roll = run.rollout(policy, [p.tokens for p in prompts], seed=sampling_seed(run.seed, "rollout", it))
        tokens, mask, old_logp = roll.tokens, roll.response_mask, roll.logprobs
        with torch.no_grad(), run.autocast():
            pi_logp = token_logprobs(policy, tokens, mask)   # log π of the samples, by the scoring function
        if cfg.disc_reward_first:   # scored by the discriminator before it trains on these very samples
            with torch.no_grad():
                reward = reward_fn(prompts, roll, pi_logp)
        if disc is not None:   # the discriminator: demonstrations (label 1) vs the policy's samples (label 0)
            for _ in range(cfg.disc_steps):   # balanced classes: as many demonstrations as policy samples
                demo_tokens, demo_mask = run.batch(positives, run.rng.integers(len(positives), size=len(prompts)))
                with torch.no_grad(), run.autocast():
                    demo_pi_logp = token_logprobs(policy, demo_tokens, demo_mask) if disc.form == "airl" else None
                acc_demo, acc_pol = disc_step(run, disc, disc_opt, (demo_tokens, demo_mask, demo_pi_logp),
                                              (tokens, mask, pi_logp), it, cfg.disc_nll)
            curve["disc_acc_expert"].append(acc_demo)
            curve["disc_acc_policy"].append(acc_pol)
        with torch.no_grad():
            if not cfg.disc_reward_first:   # scored after its steps on them, as adversarial imitation usually is
                reward = reward_fn(prompts, roll, pi_logp)                  # (B,) or (B,T) token rewards
            ref_logp = token_logprobs(ref, tokens, mask)
            k1 = obj.kl_k1(old_logp, ref_logp) * mask                     # per-token log π − log π_SFT
            adv = obj.kl_shaped_advantages(reward, k1, mask, cfg.kl_coef if kl_coef is None else kl_coef,
                                           cfg.group_size, flat_tol=cfg.flat_tol)
        for _ in range(cfg.ppo_epochs if adv.any() else 0):   # every group flat: no signal, no step
            with run.autocast():
                logp = token_logprobs(policy, tokens, mask)
            loss = obj.ppo_clip_loss(logp, old_logp, adv, mask, cfg.clip_eps)
            optimiser_step(opt, policy, loss, it)
            curve["steps_taken"] += 1
        mean_reward = (reward.sum(-1) if reward.dim() == 2 else reward).mean().item()
        curve["reward"].append(mean_reward)
        curve["kl_ref"].append(k1.sum(-1).mean().item())
        pbar.set_postfix(reward=f"{mean_reward:.2f}", kl=f"{curve['kl_ref'][-1]:.2f}")
    run.save(stage, policy)
    return {"curve": curve}


def warm_up(run, disc, sft, positives, stage):
    """--disc_warmup steps of the discriminator on `positives` (label 1) vs π_SFT's samples before the policy
    moves, so that the first rewards mean something."""
    cfg = run.cfg
    opt = torch.optim.AdamW(disc.model.parameters(), lr=cfg.disc_lr, weight_decay=0.0)
    b = cfg.rl_prompts * cfg.group_size
    samples = run.sample_pairs(sft, [p for p, _ in run.demos[:b * cfg.disc_warmup]],
                               sampling_seed(run.seed, "disc_warmup"))
    for step in run.bar(range(cfg.disc_warmup), f"{stage} D"):
        batches = [run.batch(data, run.rng.integers(len(data), size=b)) for data in (positives, samples)]
        with torch.no_grad(), run.autocast():   # the policy is π_SFT throughout the warm-up
            batches = [(t, m, token_logprobs(sft, t, m)) for t, m in batches]
        disc_step(run, disc, opt, *batches, step, cfg.disc_nll)


def stage_adversarial(run, method):
    """Adversarial imitation: the discriminator learns demonstrations vs the policy's samples, and a transform of
    its logit is the policy's reward (methods.POLICIES: the level, form and transform of each method)."""
    method_ = POLICY[method]
    sft, _ = run.load("sft")
    disc = new_discriminator(sft, form_of(method_, run.cfg), method_.level)
    if run.cfg.disc_warmup:
        warm_up(run, disc, sft, run.demos, method)
    ess = []

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), run.autocast():
            h = disc.logits(roll.tokens, roll.response_mask, pi_logp).float()
        ess.append(ess_fraction(h))
        return method_.transform(h)

    extra = policy_optimisation(run, method, reward_fn, disc)
    run.save(method + "_disc", disc.model, form=disc.form)
    return with_ess(extra, method_, ess)


def ess_fraction(h):
    """The effective sample size of the importance weights e^h of one batch's samples, as a fraction of the batch
    (objectives.effective_sample_size: 1 all weights equal, 1/n one dominates). For the forward-KL rewards, which
    weigh each sample by e^h (β/π at the optimum); None for a token-level h."""
    return obj.effective_sample_size(h).item() / len(h) if h.dim() == 1 else None


def with_ess(extra, method, ess):
    """The ESS curve joins the forward-KL policies' curves (FAIRL's reward −h·e^h and e^h weigh by e^h)."""
    if method.divergence == "forward KL":
        extra["curve"]["ess"] = ess
    return extra


def stage_control(run):
    """pg_control, the control of adversarial imitation: rkl_seq's loop (the same discriminator, budget, KL
    penalty and sampling) with the demonstrations replaced by π_SFT's own samples. Its discriminator learns as
    rkl_seq's does, but its optimum is log π_SFT − log π: a reward that knows nothing of β. What rkl_seq does
    beyond pg_control is what the demonstrations taught it; what pg_control does is the loop's own."""
    sft, _ = run.load("sft")
    positives = run.sample_pairs(sft, [p for p, _ in run.demos], sampling_seed(run.seed, "control"))
    disc = new_discriminator(sft, run.cfg.disc, "seq")
    if run.cfg.disc_warmup:
        warm_up(run, disc, sft, positives, "pg_control")

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), run.autocast():
            return obj.airl_reward(disc.logits(roll.tokens, roll.response_mask, pi_logp).float())
    return policy_optimisation(run, "pg_control", reward_fn, disc, positives=positives)


def stage_frozen(run):
    """pg_frozen: the same loop with the discriminator frozen at its start, q_φ = π_SFT, so the reward is
    h = log π_SFT − log π: 0 while π = π_SFT, and never informative about β. Before flat groups made no update
    (objectives.kl_shaped_advantages), whitening blew the first iterations' rounding up into full-size steps and
    this policy drifted from π_SFT (0.22 nats on seeds 0-4); now it does not move (docs/RESULTS.md has both)."""
    sft, _ = run.load("sft")
    sft.requires_grad_(False)

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), run.autocast():
            h = obj.log_ratio_logit(token_logprobs(sft, roll.tokens, roll.response_mask), pi_logp, roll.response_mask)
        return obj.airl_reward(h.sum(-1).float())
    return policy_optimisation(run, "pg_frozen", reward_fn)


def stage_oracle(run, method):
    """The exact discriminator D* = β/(β + π): its logit log β(y|x) − log π(y|x) needs the expert's density, which
    only our world has. rkl_oracle takes the AIRL reward of it (the exact reverse-KL reward), js_oracle the GAIL
    reward (the exact Jensen–Shannon reward), fkl_oracle FAIRL's (−h·e^h) and fkl_iw_oracle the importance weight
    e^h = β/π (objectives.fairl_reward and importance_weight_reward derive why the first climbs the forward KL
    near β and the second descends it): what each learned discriminator's objective asks for. All run in the
    same KL-penalised, PPO-clipped loop as the learned ones, so only the reward differs."""
    method_, ess = POLICY[method], []

    def reward_fn(prompts, roll, pi_logp):
        h = oracle_reward(run.world, prompts, roll.responses(), obj.sequence_logprob(pi_logp, roll.response_mask))
        ess.append(ess_fraction(h))
        return method_.transform(h)
    return with_ess(policy_optimisation(run, method, reward_fn), method_, ess)


def oracle_reward(world, prompts, responses, policy_logp_seq):
    """The oracle's reward r(y) = log β(y|x) − log π(y|x) (= −reverse_kl_mc) of the policy's responses (token
    lists), whose log π(y|x) are policy_logp_seq (B,); log β is the world's, exact. Maximising E_π[r] minimises
    KL(π ‖ β) (objectives.reverse_kl_reinforce_loss)."""
    return -obj.reverse_kl_mc(policy_logp_seq, expert_logprobs(world, prompts, responses).to(policy_logp_seq.device))


# -----------------------------------------------------------------------------------------------------------
# DPO and SPIN, the methods AfD is compared with: DPO's loss (objectives.dpo_loss) from π_SFT, reference π_SFT, on
# the gold preference pairs (dpo), or on pairs of a demonstration (chosen) and the model's own sample for the same
# prompt (rejected), iterated (spin).

def dpo_training(run, policy, ref, chosen, rejected, desc, lr, kl_coef):
    """cfg.dpo_steps steps of DPO on `policy` at peak learning rate lr (warm-up, then cosine: lr_schedule) and
    λ = kl_coef: chosen[i] ≻ rejected[i] ((prompt, response) token pairs of one prompt), reference `ref`, whose
    log-probabilities are computed once. Returns the curves, per step: the loss, the implicit reward's margin
    λ·(log-ratio of chosen − of rejected), and how far log π has moved from log π_ref on the batch's chosen and
    rejected responses (before the step): both falling while their margin grows is likelihood displacement.
    After the last step: the same two over every pair (displacement) and the exact probe (Run.probe)."""
    cfg = run.cfg
    ref_chosen, ref_rejected = (score(run, ref, pairs, seq_logprob).to(run.device) for pairs in (chosen, rejected))
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    curve = {"loss": [], "margin": [], "chosen": [], "rejected": []}
    for step in (pbar := run.bar(range(cfg.dpo_steps), desc)):
        lr_schedule(opt, lr, step, cfg.dpo_steps, cfg.dpo_warmup)
        idx = run.rng.integers(len(chosen), size=cfg.dpo_batch)
        with run.autocast():
            logp_c, logp_r = (seq_logprob(policy, *run.batch(pairs, idx)) for pairs in (chosen, rejected))
        i = torch.as_tensor(idx, device=run.device)
        loss = obj.dpo_loss(logp_c, logp_r, ref_chosen[i], ref_rejected[i], kl_coef)
        optimiser_step(opt, policy, loss, step)
        moved_c, moved_r = ((logp - ref_logp[i]).detach().mean().item()
                            for logp, ref_logp in [(logp_c, ref_chosen), (logp_r, ref_rejected)])
        curve["loss"].append(loss.item())
        curve["margin"].append(kl_coef * (moved_c - moved_r))
        curve["chosen"].append(moved_c)
        curve["rejected"].append(moved_r)
        pbar.set_postfix(loss=f"{loss.item():.3f}")
    with torch.no_grad():
        curve["displacement"] = {k: (score(run, policy, pairs, seq_logprob) - ref_logp.cpu()).mean().item()
                                 for k, pairs, ref_logp in [("chosen", chosen, ref_chosen),
                                                            ("rejected", rejected, ref_rejected)]}
    curve["probe"] = run.probe(policy)
    return curve


def preference_pairs(run):
    """The gold preference pairs as (chosen, rejected) lists of (prompt, response) token pairs."""
    enc = run.world.encode_response
    return [(p.tokens, enc(c)) for p, c, _ in run.data["pref"]], [(p.tokens, enc(r)) for p, _, r in run.data["pref"]]


def stage_dpo(run):
    """DPO (Rafailov et al. 2023) on the gold preference pairs, from π_SFT with π_SFT as the reference: the
    KL-regularised optimum of the Bradley–Terry reward behind the preferences, without learning that reward."""
    cfg, world = run.cfg, run.world
    policy, ref = run.load("sft")[0], run.load("sft")[0].requires_grad_(False)
    curve = dpo_training(run, policy, ref, *preference_pairs(run), "dpo", cfg.dpo_lr, cfg.dpo_kl_coef)
    run.save("dpo", policy)
    # what the pairs can teach: a pair tied on the gold reward has a coin-flip label; an off-support response is
    # one the expert never writes
    prompts, chosen, rejected = zip(*run.data["pref"])
    gold = [np.array([world.gold_reward_of_text(p, y) for p, y in zip(prompts, ys)]) for ys in (chosen, rejected)]
    texts = [world.encode_response(y) for y in chosen + rejected]
    pairs = {"tied": float(np.mean(gold[0] == gold[1])),
             "off_support": float(np.mean([m == "off" for m in world.modes(list(prompts) * 2, texts)]))}
    return {"curve": curve, "probe_start": run.probe(ref), "pairs": pairs}


def stage_spin(run, start="sft", name="spin"):
    """SPIN (Chen et al. 2024): DPO's loss with the demonstration as chosen and the current model's own sample for
    the same prompt as rejected; each iteration's reference and sampler is the previous iterate π_t, λ =
    --spin_kl_coef. spin starts from π_SFT; spin_short from sft_short, an under-trained π_SFT.

    Its fixed point is π = β: when π_t = β, chosen and rejected are drawn from the same distribution, so no
    implicit reward λ log π/π_t can tell them apart and the loss's gradient vanishes (objectives.dpo_loss has
    the derivation and its test). In this project's terms SPIN is, like AfD, a divergence minimiser on
    demonstrations alone, and a discriminator method: its implicit reward λ log π/π_t is a DPO-form
    discriminator of demonstrations against the model's own samples, the log-ratio form of our AIRL
    discriminators with the policy itself as q_φ. Two consequences, derived in objectives.py and measured here:
      - at π = π_t its gradient is (λ/2)·∇KL(β ‖ π), SFT's: from a π_SFT trained to convergence on the same
        demonstrations it starts with nothing to learn (spin); from an under-trained one it has (spin_short);
      - an iteration trained to its optimum maps π_t to π_{t+1} ∝ π_t (β/π_t)^{1/λ}, whose error is multiplied by
        1 − 1/λ: the iterates converge only for λ > ½ (objectives.spin_iterate_optimum).
    Each iteration logs the chosen and rejected log-likelihoods' motion (dpo_training) and the exact off-support
    rate and forward KL on the probe's support after it (probe; probe_start before the first)."""
    cfg = run.cfg
    policy = run.load(start)[0]
    prompts = [p for p, _ in run.demos]
    probe_start, curves = run.probe(policy), []
    for t in range(cfg.spin_iters):
        ref = copy.deepcopy(policy).requires_grad_(False)   # π_t: the reference, and the sampler of the rejected
        rejected = run.sample_pairs(ref, prompts, sampling_seed(run.seed, "spin", t))
        curves.append(dpo_training(run, policy, ref, run.demos, rejected, f"{name} {t + 1}", cfg.spin_lr,
                                   cfg.spin_kl_coef))
    run.save(name, policy)
    return {"curves": curves, "probe_start": probe_start}


# -----------------------------------------------------------------------------------------------------------
# reward_models: reward extrapolation. A reward model is a discriminator trained once, on fixed samples:
# a binary classifier (positives 1, negatives 0) whose logit is the reward. By default in AIRL's log-ratio form,
#   r(x, y) = log q_φ(y|x) − log π_neg(y|x),   q_φ initialised from π_neg, the negative class's model,
# so r = 0 at the start and, at the BCE optimum, r = log p_pos − log p_neg (objectives.classifier_optimum):
#   Init-SFT (the paper's): positives π_SFT samples, negatives π_init samples → log π_SFT − log π_init
#   Init-Demo, SFT-Demo (ablations): positives the demonstrations → log β − log π_init, log β − log π_SFT
#   pairwise_bt: Bradley–Terry on the gold preference pairs (log-ratio form: DPO's implicit reward, β = 1)
#   init_sft_scalar: the Init-SFT classifier with a scalar head on π_init's backbone (the ablation)
# (methods.REWARD_MODELS: the classes, q_φ's starting point and the form of each)

def train_reward_model(run, name, base, pos, neg, held_pos, held_neg, form, pairwise=False):
    """Train one reward model; returns its training and held-out loss curves. base: π_neg (a GPT)."""
    cfg = run.cfg
    rm = new_discriminator(base, form, "seq")
    opt = torch.optim.AdamW(rm.model.parameters(), lr=cfg.rm_lr, weight_decay=0.0)

    # The AIRL form's reference log π_neg is frozen, and so are the samples: the per-token log-probs of every
    # response under it are computed once, not at every step (a quarter of a step's work).
    reference = {}

    def logits(pairs, idx):
        tokens, mask = run.batch(pairs, idx)
        ref = None
        if form == "airl":
            if id(pairs) not in reference:
                flat = score(run, base, pairs, lambda m, t, k: token_logprobs(m, t, k)[k])   # row by row
                reference[id(pairs)] = flat.split([len(r) for _, r in pairs])
            ref = torch.zeros(tokens.shape, device=run.device)
            ref[mask] = torch.cat([reference[id(pairs)][i] for i in idx]).to(run.device)
        with run.autocast():
            return rm.logits(tokens, mask, ref)

    def loss_of(p, n):
        return obj.bradley_terry_loss(p, n) if pairwise else obj.classifier_reward_loss(p, n)

    curve = {"loss": [], "heldout_loss": [], "heldout_step": []}
    for step in (pbar := run.bar(range(cfg.rm_steps), f"rm {name}")):
        if step % max(1, cfg.rm_steps // 4) == 0 or step == cfg.rm_steps - 1:   # watch for overfitting
            with torch.no_grad():
                held = [logits(pairs, range(len(pairs))) for pairs in (held_pos, held_neg)]
            curve["heldout_loss"].append(loss_of(*held).item())
            curve["heldout_step"].append(step)
        i_pos = run.rng.integers(len(pos), size=cfg.rm_batch // 2)
        i_neg = i_pos if pairwise else run.rng.integers(len(neg), size=cfg.rm_batch // 2)
        loss = loss_of(logits(pos, i_pos), logits(neg, i_neg))
        optimiser_step(opt, rm.model, loss, step, f" of reward model {name}")
        curve["loss"].append(loss.item())
        pbar.set_postfix(loss=f"{loss.item():.3f}")
    run.save(f"rm_{name}", rm.model, form=form, base=REWARD_MODEL[name].base)
    return curve


def load_reward_model(run, name):
    """The reward function r(tokens, mask) → (B,) of a trained reward model: its logit."""
    model, extra = run.load(f"rm_{name}")
    rm = Discriminator(model, extra["form"], "seq")
    base = run.load(extra["base"])[0] if extra["form"] == "airl" else None   # π_neg, the log-ratio's reference
    return lambda tokens, mask: rm.logits(tokens, mask, token_logprobs(base, tokens, mask) if base else None)


def reward_model_names(run):
    """The learned reward models a world trains: all of them, or the three the control world compares."""
    return CONTROL_LEARNED if run.control else LEARNED


def stage_reward_models(run):
    cfg = run.cfg
    models = {"pretrain": run.load("pretrain")[0], "sft": run.load("sft")[0]}
    # prompts of the demonstrations: an eighth (at most 128) held out for the held-out loss, the rest to train on
    perm = run.rng.permutation(len(run.demos))
    n_held = min(128, max(2, len(perm) // 8))
    held, train = perm[:n_held], perm[n_held:]
    prompts = [run.demos[i][0] for i in train]
    prompts = [prompts[i % len(prompts)] for i in range(cfg.rm_samples)]   # π's samples are free: reuse prompts
    held_prompts = [run.demos[i][0] for i in held]
    data, held_data = {"demos": [run.demos[i] for i in train]}, {"demos": [run.demos[i] for i in held]}
    for key, stage in [("init", "pretrain"), ("sft", "sft")]:
        data[key] = run.sample_pairs(models[stage], prompts, sampling_seed(run.seed, f"rm_{key}"))
        held_data[key] = run.sample_pairs(models[stage], held_prompts, sampling_seed(run.seed, f"rm_{key}_heldout"))
    chosen, rejected = preference_pairs(run)
    n_held_pref = min(128, max(2, len(chosen) // 8))
    data["chosen"], data["rejected"] = chosen[n_held_pref:], rejected[n_held_pref:]
    held_data["chosen"], held_data["rejected"] = chosen[:n_held_pref], rejected[:n_held_pref]
    curves = {}
    for name in reward_model_names(run):
        r = REWARD_MODEL[name]
        curves[name] = train_reward_model(run, name, models[r.base], data[r.pos], data[r.neg], held_data[r.pos],
                                          held_data[r.neg], form_of(r, cfg), pairwise=r.pairwise)
    return {"curves": curves}


# -----------------------------------------------------------------------------------------------------------
# best_of_n: Best-of-N over π_SFT's samples, ranked by each reward model, by each classifier's exact
# optimum, by the baselines the papers lack (π_SFT's likelihood alone, and the family log π_SFT − γ log π_init
# between it and Init-SFT's optimum), and by the gold reward (the ceiling); each also under contrastive decoding's
# plausibility constraint (objectives.best_of_n_plausible, --bon_plausibility). What the picks are (off-support,
# modes, length, signature) is measured at every N: the mechanism behind the gold reward.

def stage_best_of_n(run):
    cfg, world = run.cfg, run.world
    init, _ = run.load("pretrain")
    sft, _ = run.load("sft")
    prompts = run.data["eval_prompts"][:cfg.bon_prompts]
    N = cfg.bon_max_n
    flat = [p for p in prompts for _ in range(N)]
    pairs = run.sample_pairs(sft, [p.tokens for p in flat], sampling_seed(run.seed, "best_of_n"))
    responses = [r for _, r in pairs]
    rewards = {name: score(run, load_reward_model(run, name), pairs, lambda rm, t, k: rm(t, k))
               for name in run.bar(reward_model_names(run), "best_of_n")}
    # exact: each classifier's optimum log p_pos − γ log p_neg (γ = 1; our world knows log β), and its relatives
    logp = {"init": score(run, init, pairs, seq_logprob), "sft": score(run, sft, pairs, seq_logprob),
            "demos": expert_logprobs(world, flat, responses)}
    for name in OPTIMA:
        r = REWARD_MODEL[name]
        rewards[name] = obj.log_ratio_family(logp[r.pos], logp[r.neg] if r.neg else 0.0, r.gamma)
    for name in DERIVED:   # learned: log q_φ − γ log π_init = (log q_φ − log π_init) + (1 − γ) log π_init
        r = REWARD_MODEL[name]
        if r.base not in rewards or form_of(REWARD_MODEL[r.base], cfg) != "airl":
            continue
        rewards[name] = rewards[r.base] + (1 - r.gamma) * logp[REWARD_MODEL[r.base].neg]
    rewards["gold"] = gold = torch.tensor(world.gold_rewards(flat, responses), dtype=torch.float32)
    modes = world.modes(flat, responses)
    picks = {"off_support": torch.tensor([m == "off" for m in modes]), "length": torch.tensor(list(map(len, responses))),
             "signature": torch.tensor(world.signed(flat, responses)),
             **{f"mode_{m}": torch.tensor([x == m for x in modes]) for m in world.mode_names}}
    bon = {name: best_of_n_curve(r, gold, picks, N) for name, r in rewards.items()}
    tau = cfg.bon_plausibility or math.inf   # 0 turns the constraint off: every candidate eligible
    plausible = {name: best_of_n_curve(r, gold, picks, N, logp["sft"], tau) for name, r in rewards.items()
                 if REWARD_MODEL[name].kind in ("learned", "optimum", "derived") and name != "sft_likelihood"}
    vs_optimum = {f"{name}_vs_optimum": {"pearson": pearson(rewards[name], rewards[opt]),
                                         "spearman": spearman(rewards[name], rewards[opt])}
                  for name, opt in LEARNED_VS_OPTIMUM.items() if name in rewards}
    demo_gold = float(np.mean(world.gold_rewards(run.demo_prompts, [r for _, r in run.demos])))
    return {"bon": bon, "bon_plausible": plausible, "reward_models": vs_optimum,
            "demonstrations": {"gold_reward": demo_gold}}


# -----------------------------------------------------------------------------------------------------------
# rl_init_sft: policy optimisation (policy_optimisation's loop) on the Init-SFT reward model.

def stage_rl_init_sft(run):
    """Beyond the paper: optimise π_SFT on the Init-SFT reward model, KL penalty to π_SFT (not just Best-of-N).

    Its own KL weight λ = rm_kl_coef, because the log-ratio reward has a scale of its own: at its optimum
    r = log π_SFT − log π_init, and the KL-regularised optimum max_π E_π[r] − λ KL(π ‖ π_SFT) is
        π* ∝ π_SFT · exp(r/λ) = π_SFT^(1 + 1/λ) · π_init^(−1/λ),
    1/λ steps past π_SFT along the Init-SFT direction. λ = 1 is one step; the adversarial runs' λ = 0.05 would
    be twenty, which a learned ratio does not survive (docs/RESULTS.md, sensitivity)."""
    rm = load_reward_model(run, "init_sft")

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), run.autocast():
            return rm(roll.tokens, roll.response_mask).float()
    return policy_optimisation(run, "rl_init_sft", reward_fn, kl_coef=run.cfg.rm_kl_coef)


# -----------------------------------------------------------------------------------------------------------
# evaluate: every policy of methods.POLICIES on held-out prompts, exactly: the world knows log β.
# (control_sft, control_reward_models and control_best_of_n are sft, reward_models and best_of_n again in the
# control world: STAGES.)

def stage_evaluate(run, names=None):
    """Every policy of methods.POLICIES (or those named) on the held-out prompts: exactly by enumeration of the
    expert's support (evaluation.py), the off-support remainder from eval_samples samples per prompt (with its
    standard error). Each policy's numbers are the same whichever others are evaluated."""
    cfg, world = run.cfg, run.world
    eval_prompts = run.data["eval_prompts"]
    prompts = [p for p in eval_prompts for _ in range(cfg.eval_samples)]
    rng = np.random.default_rng(run.seed + EXPERT_SAMPLES_SEED)
    expert_samples = [world.encode_response(world.expert_response(p, rng)) for p in prompts]
    support = evaluation.support_of(world, eval_prompts, run.device)
    floor_prompts, floor_responses = evaluation.floor_samples(world, eval_prompts, len(eval_prompts),
                                                              np.random.default_rng(run.seed + FLOOR_SAMPLES_SEED))
    floor = scored(run, None, floor_prompts, floor_responses)
    floor_off = np.array([m == "off" for m in world.modes(floor_prompts, floor_responses)])
    sft, init = run.load("sft")[0], run.load("pretrain")[0]
    policies, calibration, points = {}, {}, {}
    for name in (pbar := run.bar(names or [p.name for p in POLICIES], "evaluate")):
        kind = POLICY[name].kind
        model = None if kind == "expert" else Extrapolated(sft, init, POLICY[name].alpha) \
            if kind == "extrapolated" else run.load(POLICY[name].checkpoint)[0]
        responses = expert_samples if model is None else \
            run.sample_responses(model, [p.tokens for p in prompts], sampling_seed(run.seed, "evaluate"))
        own, on_expert = scored(run, model, prompts, responses), scored(run, model, prompts, expert_samples)
        off = np.array([m == "off" for m in world.modes(prompts, responses)])
        gold = world.gold_rewards(prompts, responses)
        if model is None:   # π = β: on the support, log π = log β
            log_pi, floor_gap = support.log_beta, None
        else:
            with run.autocast():
                log_pi = evaluation.tree_logprobs(model, support.batches).numpy()
            floor_gap = (floor.log_beta - score(run, model, floor.pairs, seq_logprob)).numpy(), floor_off
        stats = policies[name] = evaluation.exact_metrics(support, log_pi, ((own.log_pi - own.log_beta).numpy(),
                                                          gold, off), floor_gap, cfg.eps, world.mode_names)
        sampled = evaluation.describe(world, prompts, responses)
        stats["distinct"], stats["length"] = sampled.pop("distinct"), sampled.pop("length")
        sampled["forward_kl"], sampled["reverse_kl"] = evaluation.policy_kls(on_expert, own)
        stats["sampled"] = sampled
        if model is not None:   # KL(π ‖ π_SFT): the x-axis of the reward-extrapolation figure
            log_sft = score(run, sft, own.pairs, seq_logprob)   # log π_SFT of the policy's samples
            stats["kl_sft"] = (own.log_pi - log_sft).mean().item()
        pbar.set_postfix(policy=name, reverse_kl=f"{stats['reverse_kl']:.2f}")
        if name in ADVERSARIAL:   # is the discriminator's logit the log density ratio it should be?
            calibration[name], points[name] = discriminator_calibration(run, name, model, own, log_sft, off)
    return {"policies": policies, "calibration": calibration, "calibration_points": points}


def discriminator_calibration(run, name, policy, own, log_sft, off):
    """How well policy `name`'s discriminator logit h ranks its policy's samples like the truth log β − log π.
    h = log q_φ − log π shares −log π with that truth, so any h of the form ranks them through π alone: an
    untrained discriminator (q_φ = π_SFT, h = log π_SFT − log π) already does (spearman_untrained). What was
    learned is log q_φ − log π_SFT, whose target is log β − log π_SFT: spearman_learned compares those two.
    (A scalar head's h has no shared term: its learned part is h itself, against log β − log π.)"""
    d_model, extra = run.load(name + "_disc")
    disc = Discriminator(d_model, extra["form"], POLICY[name].level)
    logit = score(run, disc, own.pairs, lambda d, t, k: d.response_logits(t, k, token_logprobs(policy, t, k)))
    true = own.log_beta - own.log_pi
    untrained = log_sft - own.log_pi
    learned, target = (logit - untrained, own.log_beta - log_sft) if extra["form"] == "airl" else (logit, true)
    off = torch.as_tensor(off)
    keep = np.random.default_rng(CALIBRATION_POINTS_SEED).permutation(len(true))[:300]
    return ({"pearson": pearson(logit, true), "spearman": spearman(logit, true),
             "spearman_untrained": spearman(untrained, true), "spearman_learned": spearman(learned, target),
             "pearson_learned": pearson(learned, target), "auc_off_support": auc(logit[~off], logit[off])},
            {"logit": logit[keep].tolist(), "true": true[keep].tolist(),
             "learned": learned[keep].tolist(), "target": target[keep].tolist()})


# -----------------------------------------------------------------------------------------------------------
# The pipeline: every stage in order, what it reads and writes. Each stage's result depends on the world
# (EVERY_STAGE), the options it reads and the stages it consumes, and nothing else: that is what the stage cache
# fingerprints (runner.py), so a stage that starts reading a new option must list it here.

PRETRAIN = ("n_layer", "n_head", "n_embd", "pretrain_steps", "pretrain_batch", "pretrain_lr")
SFT = (*DATASETS, "sft_steps", "sft_batch", "sft_lr")
ORACLE = (*DATASETS, *POLICY_GRADIENT, "kl_coef")
ADV = (*ORACLE, "disc_steps", "disc_lr", "disc_warmup", "disc_nll", "disc_reward_first")   # + "disc" where the method takes --disc's form
RM = (*DATASETS, "rm_samples", "rm_steps", "rm_batch", "rm_lr", "disc")
BON = (*DATASETS, "bon_prompts", "bon_max_n", "bon_plausibility")
DPO = (*DATASETS, "dpo_kl_coef", "dpo_steps", "dpo_batch", "dpo_lr", "dpo_warmup", "probe_prompts")
SPIN = (*DATASETS, "spin_kl_coef", "spin_lr", "spin_iters", "dpo_steps", "dpo_batch", "dpo_warmup", "probe_prompts")
RM_FILES = tuple(f"rm_{name}.pt" for name in LEARNED)
CONTROL_RM_FILES = tuple(f"rm_{name}.pt" for name in CONTROL_LEARNED)
POLICY_STAGES = tuple(dict.fromkeys(["pretrain", "sft"] + [p.checkpoint for p in POLICIES if p.checkpoint]))

STAGES = [  # name, computed by, the options it reads (+ the world's), the stages it consumes, its files (+ <name>.json)
    Stage("pretrain", stage_pretrain, PRETRAIN, (), ("pretrain.pt",)),
    Stage("sft", stage_sft, SFT, ("pretrain",), ("sft.pt",)),
    Stage("rkl_seq", partial(stage_adversarial, method="rkl_seq"), (*ADV, "disc"), ("sft",), ("rkl_seq.pt", "rkl_seq_disc.pt")),
    Stage("rkl_tok", partial(stage_adversarial, method="rkl_tok"), (*ADV, "disc"), ("sft",), ("rkl_tok.pt", "rkl_tok_disc.pt")),
    Stage("js", partial(stage_adversarial, method="js"), (*ADV, "disc"), ("sft",), ("js.pt", "js_disc.pt")),
    Stage("rkl_seq_scalar", partial(stage_adversarial, method="rkl_seq_scalar"), ADV, ("sft",), ("rkl_seq_scalar.pt",
                                                                           "rkl_seq_scalar_disc.pt")),
    Stage("rkl_oracle", partial(stage_oracle, method="rkl_oracle"), ORACLE, ("sft",), ("rkl_oracle.pt",)),
    Stage("js_oracle", partial(stage_oracle, method="js_oracle"), ORACLE, ("sft",), ("js_oracle.pt",)),
    # the controls: the same loop, its reward blind to β (stage_control, stage_frozen)
    Stage("pg_control", stage_control, (*ADV, "disc"), ("sft",), ("pg_control.pt",)),
    Stage("pg_frozen", stage_frozen, ORACLE, ("sft",), ("pg_frozen.pt",)),
    # the methods AfD is compared with
    Stage("fkl_fairl", partial(stage_adversarial, method="fkl_fairl"), (*ADV, "disc"), ("sft",), ("fkl_fairl.pt", "fkl_fairl_disc.pt")),
    # FAIRL's twins: the importance weight e^h (the forward KL's own policy gradient) learned, and both exact
    Stage("fkl_iw", partial(stage_adversarial, method="fkl_iw"), (*ADV, "disc"), ("sft",), ("fkl_iw.pt", "fkl_iw_disc.pt")),
    Stage("fkl_oracle", partial(stage_oracle, method="fkl_oracle"), ORACLE, ("sft",), ("fkl_oracle.pt",)),
    Stage("fkl_iw_oracle", partial(stage_oracle, method="fkl_iw_oracle"), ORACLE, ("sft",), ("fkl_iw_oracle.pt",)),
    Stage("dpo", stage_dpo, DPO, ("sft",), ("dpo.pt",)),
    Stage("spin", stage_spin, SPIN, ("sft",), ("spin.pt",)),
    # SPIN where it has something to learn: from an under-trained π_SFT
    Stage("sft_short", partial(stage_sft, name="sft_short"), (*DATASETS, "sft_short_steps", "sft_batch", "sft_lr"), ("pretrain",),
          ("sft_short.pt",)),
    Stage("spin_short", partial(stage_spin, start="sft_short", name="spin_short"), SPIN, ("sft_short",),
          ("spin_short.pt",)),
    Stage("reward_models", stage_reward_models, RM, ("pretrain", "sft"), RM_FILES),
    Stage("best_of_n", stage_best_of_n, BON, ("pretrain", "sft", "reward_models"), ()),
    Stage("rl_init_sft", stage_rl_init_sft, (*DATASETS, *POLICY_GRADIENT, "rm_kl_coef"), ("sft", "reward_models"),
          ("rl_init_sft.pt",)),
    # the control world (--control): the demonstrator without its signature, in seed_<s>/control/, π_init shared
    Stage("control_sft", stage_sft, SFT, ("pretrain",), ("sft.pt",), world="control"),
    Stage("control_reward_models", stage_reward_models, RM, ("pretrain", "control_sft"), CONTROL_RM_FILES,
          world="control"),
    Stage("control_best_of_n", stage_best_of_n, BON, ("pretrain", "control_sft", "control_reward_models"), (),
          world="control"),
    Stage("evaluate", stage_evaluate, (*DATASETS, "eval_samples"), POLICY_STAGES, ()),
]
STAGE_NAMES = [s.name for s in STAGES]
assert {p.checkpoint for p in POLICIES} - {None} <= set(STAGE_NAMES), "a policy of methods.py without its stage"

# -----------------------------------------------------------------------------------------------------------
# The regime map (--study=regimes; docs/RESULTS.md, "When each method shines"): the reverse-KL methods, their
# exact-reward ceiling (rkl_oracle) and the loop's controls (the floor), each against π_SFT, as three knobs move one
# at a time from the command's options: how many demonstrations, how big the model, how open-ended the task.
# The values were fixed before any run (docs/RESULTS.md); each point runs only these policies' stages.

REGIME_POLICIES = ("expert", "init", "sft", "rkl_seq", "rkl_tok", "js", "rkl_oracle", "pg_control", "pg_frozen")
REGIME_KNOBS = {   # each knob's values in order; {}: the command's own options (the defaults)
    "demonstrations": ({"n_demo": 250}, {}, {"n_demo": 8000}),
    "capacity": ({"n_layer": 1, "n_embd": 32}, {}, {"n_embd": 128}),
    "open-endedness": ({"n_modes": 1}, {}, {"n_modes": 5}),
}
REGIME_CHECKPOINTS = tuple(dict.fromkeys(["pretrain", "sft"] + [POLICY[p].checkpoint for p in REGIME_POLICIES
                                                                  if POLICY[p].checkpoint]))
REGIME_STAGES = (*[s for s in STAGES if s.name in REGIME_CHECKPOINTS],
                 Stage("evaluate", partial(stage_evaluate, names=REGIME_POLICIES), (*DATASETS, "eval_samples"),
                       REGIME_CHECKPOINTS, ()))


def point_name(values):
    return "+".join(f"{k}={v}" for k, v in values.items()) or "default"


REGIME_KEYS = ("forward_kl", "reverse_kl", "reverse_kl_on", "reverse_kl_support", "off_support", "mode_entropy",
               "mode_freq", "gold_reward", "kl_sft")   # what the map keeps of each policy (docs/METRICS.md)


def regime_summary(results, seed):
    """One seed's numbers at one point of the map: each policy's measures (evaluation.exact_metrics) and the
    stages' times."""
    return {"seed": seed, "policies": {name: {k: p[k] for k in REGIME_KEYS if k in p}
                                       for name, p in results["evaluate"]["policies"].items()},
            "stage_seconds": {s: r["seconds"] for s, r in results.items()}}


# -----------------------------------------------------------------------------------------------------------
# The smallest model that learns the task (--study=smallest; docs/TEACHING.md, for slow laptops): π_SFT alone, at
# model sizes below the default 4 × 64, in order of their parameters. "Learns": π_SFT's off-support rate below
# 0.15 (metrics.smallest_learner, fixed before the study ran: chosen on seeds 0-4, judged on 5-9).

SMALLEST_SIZES = ({"n_layer": 1, "n_embd": 32}, {"n_layer": 2, "n_embd": 32}, {"n_layer": 1, "n_embd": 64},
                  {"n_layer": 2, "n_embd": 64})
SMALLEST_STAGES = (*[s for s in STAGES if s.name in ("pretrain", "sft")],
                   Stage("evaluate", partial(stage_evaluate, names=("sft",)), (*DATASETS, "eval_samples"),
                         ("pretrain", "sft"), ()))

STUDIES = {
    "regimes": runner.Study(
        points=tuple(dict((point_name(v), v) for values in REGIME_KNOBS.values() for v in values).items()),
        knobs={knob: [point_name(v) for v in values] for knob, values in REGIME_KNOBS.items()},
        stages=REGIME_STAGES, summary=regime_summary),
    "smallest": runner.Study(
        points=tuple((point_name(v), v) for v in SMALLEST_SIZES), knobs={"size": [point_name(v) for v in SMALLEST_SIZES]},
        stages=SMALLEST_STAGES, summary=regime_summary),
}


def main(argv=None):
    """python afd_mini.py [--key=value ...]: runner.main runs every stage of every seed and --sweep point (each
    skipped, reused from the stage cache or computed) and writes metrics.json and the report. The exit status."""
    return runner.main(STAGES, Config, PRESETS, Run, EVERY_STAGE, argv, STUDIES)


if __name__ == "__main__":
    sys.exit(main())
