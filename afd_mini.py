"""
afd-mini: Alignment from Demonstrations, the whole pipeline in one file.

    python afd_mini.py                      # the default run (about 2½ minutes on 2 CPU cores)
    python afd_mini.py --quick              # every stage, small: a first contact in under a minute
    python afd_mini.py --preset=gpu         # sized for one modern GPU, same code path
    python afd_mini.py --seeds=5            # five seeds: mean ± std, and paired 95% intervals for every effect
    python afd_mini.py --help               # every option with its default

It reads top to bottom as the papers' story, in a world whose expert density is known exactly. The stages, in
the order of STAGES (methods.py holds the one table of methods they are derived from):

     0 world          data/: prompts, the expert π_β (exact log-likelihood), base corpus, demonstrations
     1 pretrain       π_init  = next-token prediction on the base corpus: maximum likelihood, as SFT's
     2 sft            π_SFT   = forward KL to the demonstrations, KL(β ‖ π): mass-covering   (objectives.sft_loss)
     3 rkl_seq        reverse KL, KL(π ‖ β): mode-seeking, by adversarial imitation — AIRL reward, sequence-level D
                      in AIRL's form, logit log q_φ − log π with q_φ a language model (--disc=scalar: a score head)
     4 rkl_tok        the same with a token-level (state-action) discriminator, reward-to-go
     5 js             GAIL: reward −log(1 − D), Jensen–Shannon
     6 rkl_seq_scalar rkl_seq with a scalar-head discriminator: the ablation of the discriminator's form
     7 rkl_oracle     the same policy-gradient loop with the exact D* (log β known): the AIRL reward is the exact
                      reverse-KL reward log β − log π (still KL-penalised to π_SFT and PPO-clipped, as every method)
     8 js_oracle      the GAIL reward of the exact D*: what js's objective asks for
     9 reward_models  the paper's reward extrapolation: Init-SFT, Init-Demo, SFT-Demo classifiers + Bradley–Terry,
                      log-ratio form log q_φ − log π_neg (and a scalar-head Init-SFT, the ablation)
    10 best_of_n      Best-of-N over π_SFT samples for every reward model, each classifier's exact optimum, gold reward
    11 rl_init_sft    beyond the paper: policy optimisation on the Init-SFT reward model
    12 control        the control world (the demonstrator without its signature): SFT, reward models, Best-of-N again
    13 evaluate       exact forward/reverse KL, modes, off-support, diversity, gold reward for every policy

Every stage saves its result under <out_dir>/seed_<s>/; a rerun skips finished stages (--redo=STAGE recomputes
one and everything after it), and a stage another run already computed from the same inputs is copied from the
stage cache. All the maths lives in objectives.py; the model in model.py; the world in data/; the command line in
cli.py; metrics.json's layout and the report in report.py.
"""
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import cli
import exercises
import objectives as obj
import report
from data import World, WorldConfig, load_tokenizer
from methods import ADVERSARIAL, CONTROL_LEARNED, LEARNED, LEARNED_VS_OPTIMUM, OPTIMA, ORACLES, POLICIES, POLICY, \
    REWARD_MODEL, STAGES
from model import (GPT, GPTConfig, ScalarGPT, autocast, get_device, load_checkpoint, sample, save_checkpoint,
                   sequence_scores, token_logprobs, token_scores)

# -----------------------------------------------------------------------------------------------------------
# Configuration: plain defaults, overridden by a preset, an optional JSON config file, then --key=value.


@dataclass
class Config:
    # run
    out_dir: str = "out"
    seed: int = 0
    seeds: int = 1                # run seeds seed, seed+1, ..., and report mean ± std over them
    device: str = "auto"          # auto | cpu | cuda | mps
    preset: str = "default"       # default | quick | gpu
    quick: bool = False           # shorthand for --preset=quick
    redo: str = ""                # comma-separated stages to recompute (and every stage after), or "all"
    control: bool = True          # also run the control world (no signature) for the reward-model ablation
    stop_after: str = ""          # stop after this stage (the rerun resumes from there)
    progress: bool = True         # progress bars on a terminal, a few plain lines per stage elsewhere
    cache: str = "auto"           # finished stages shared across output directories: auto | off | a directory
    clear_cache: bool = False     # empty the cache first
    # the world (data/world.py documents each knob)
    q: float = 0.7                # expert's probability of a right answer
    q_base: float = 0.2           # base corpus' probability of a right answer
    base_signature_p: float = 0.1  # how often the base corpus signs: π_init's exposure to the signature
    signature_p: float = 0.8      # how often the demonstrator signs its answers; 0 = the control world
    eps: float = 1e-3             # smoothing floor of the expert likelihood
    letters: str = "ABCDE"        # alphabet of the reverse and sort tasks
    min_len: int = 2              # their strings have min_len..max_len letters
    max_len: int = 4
    max_operand: int = 9          # add: operands 0..max_operand
    n_base: int = 20000           # base corpus size (pretraining)
    n_demo: int = 2000            # demonstrations
    n_pref: int = 2000            # gold preference pairs
    n_eval: int = 256             # held-out evaluation prompts
    max_new_tokens: int = 48      # longest response, end token included
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
    pg_lr: float = 3e-4
    kl_coef: float = 0.05         # weight of KL(π ‖ π_SFT) in the reward
    rm_kl_coef: float = 1.0       # the same for RL on the Init-SFT reward model (rl_init_sft): see stage_rl_init_sft
    disc: str = "airl"            # discriminator form of rkl_seq, rkl_tok, js: airl (log q_φ − log π) | scalar (head)
    disc_steps: int = 2           # discriminator steps per iteration
    disc_lr: float = 3e-4
    disc_warmup: int = 0          # discriminator steps on demonstrations vs π_SFT samples before the policy moves
    # reward extrapolation
    rm_samples: int = 512         # samples of π_init and of π_SFT to train the classifiers on
    rm_steps: int = 150
    rm_batch: int = 64
    rm_lr: float = 3e-4
    bon_prompts: int = 64         # held-out prompts for Best-of-N
    bon_max_n: int = 64           # N = 1, 2, 4, ..., bon_max_n
    # evaluation
    eval_samples: int = 2         # samples per evaluation prompt for every policy

    def world_config(self):   # WorldConfig validates these (WORLD_KNOBS) itself
        return WorldConfig(q=self.q, q_base=self.q_base, base_signature_p=self.base_signature_p,
                           signature_p=self.signature_p, eps=self.eps,
                           letters=self.letters, min_len=self.min_len, max_len=self.max_len,
                           max_operand=self.max_operand, max_response_tokens=self.max_new_tokens)


PRESETS = {
    "default": {},
    "quick": dict(n_base=3000, n_demo=300, n_pref=300, n_eval=64, n_layer=2, n_embd=32, pretrain_steps=150,
                  pretrain_batch=32, sft_steps=40, rl_iters=3, rl_prompts=8, group_size=4, ppo_epochs=1,
                  disc_steps=1, rm_samples=64, rm_steps=10, rm_batch=32, bon_prompts=8, bon_max_n=16,
                  eval_samples=2),
    "gpu": dict(n_base=200000, n_demo=4000, n_pref=10000, n_eval=1024, n_layer=6, n_head=8, n_embd=256,
                pretrain_steps=6000, pretrain_batch=256, pretrain_lr=1e-3, sft_steps=1500, sft_batch=128,
                rl_iters=200, rl_prompts=64, group_size=8, rm_samples=4096, rm_steps=1000, rm_batch=128,
                bon_prompts=512, bon_max_n=256, eval_samples=4),
}
# Options that change no number: a run with other values of these can resume the same output directory.
RUN_ONLY = {"out_dir", "seeds", "redo", "stop_after", "progress", "quick", "preset", "cache", "clear_cache"}
UsageError = cli.UsageError


def parse_args(argv):
    """defaults → preset → --config=FILE (JSON) → --key=value, checked (cli.py)."""
    return cli.parse_args(argv, Config, PRESETS, __doc__.split("\n\n")[1])


# -----------------------------------------------------------------------------------------------------------
# Random seeds, all in one place. Each stage reseeds numpy and torch from (seed, its index in STAGES) when it
# starts (Run.begin), so that a resumed run draws exactly what an uninterrupted one does, and a stage's draws do
# not depend on which stages ran before it. The world's datasets come from World.make_datasets(seed). Sampling
# takes its own torch.Generator, seeded by purpose. (The values are the ones earlier versions used, so that
# results reproduce; two purposes may share a value, e.g. seed 0's first rollout and its Best-of-N samples, but
# they sample different models for different stages, so nothing measured depends on the coincidence.)

def sampling_seed(seed, purpose, i=0):
    """The generator seed of one sampling call of the run with seed `seed`; i: the iteration (rollout only).
    Run.sample_responses adds each chunk's offset to it."""
    return {
        "rollout": seed * 100003 + i,       # policy optimisation: the policy's samples at iteration i
        "disc_warmup": seed * 7 + 3,        # π_SFT's samples for --disc_warmup
        "rm_init": seed * 7 + 1,            # the reward models' samples of π_init and π_SFT ...
        "rm_sft": seed * 7 + 2,
        "rm_init_heldout": seed * 7 + 101,  # ... and their held-out ones
        "rm_sft_heldout": seed * 7 + 102,
        "best_of_n": seed,                  # π_SFT's N samples of each Best-of-N prompt
        "evaluate": seed + 3000,            # every policy's evaluation samples
    }[purpose]


EXPERT_SAMPLES_SEED = 2000    # + seed: numpy's stream for the expert's evaluation samples (the world samples β)
CALIBRATION_POINTS_SEED = 0   # which 300 evaluation samples the calibration figure draws


# -----------------------------------------------------------------------------------------------------------
# Small helpers: batches of (prompt, response) token lists ↔ right-padded tensors, the format model.py uses.

class StageError(Exception):
    pass


def to_batch(prompts, responses, pad_id, device):
    """Lists of prompt and response token lists → tokens (B,T) right-padded, response_mask (B,T)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    tokens = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p):len(p) + len(r)] = True
    return tokens.to(device), mask.to(device)


def responses_of(rollout):
    """The sampled response token lists of a Rollout (end token included when produced)."""
    tokens, mask = rollout.tokens.cpu(), rollout.response_mask.cpu()
    return [row[m].tolist() for row, m in zip(tokens, mask)]


def check_finite(loss, stage, step):
    if not torch.isfinite(loss):
        raise StageError(f"stage {stage}: non-finite loss ({loss.item()}) at step {step}; "
                         f"try a smaller learning rate")


def optimiser_step(opt, model, loss, stage, step):
    """One gradient step on a finite loss, gradients clipped to norm 1 (a bad batch cannot wreck the model)."""
    check_finite(loss, stage, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def bar(cfg, iterable, stage):
    """A progress bar on a terminal; in a log file (stderr not a terminal) a few plain lines instead of
    megabytes of carriage-return updates; nothing with --progress=false."""
    if cfg.progress and not sys.stderr.isatty():
        return PlainProgress(iterable, stage)
    return tqdm(iterable, desc=f"{stage:>13}", disable=not cfg.progress, leave=False, dynamic_ncols=True)


class PlainProgress:
    """One line at a quarter, half and three quarters of the way, with the latest set_postfix values."""

    def __init__(self, iterable, desc):
        self.items, self.desc, self.postfix = list(iterable), desc, ""

    def __iter__(self):
        n = len(self.items)
        marks = {n * k // 4 for k in (1, 2, 3)} - {0}
        for i, item in enumerate(self.items):
            if i in marks:
                print(f"  {self.desc}: {i}/{n} {self.postfix}", file=sys.stderr, flush=True)
            yield item

    def set_postfix(self, **values):
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())


def new_generator(device, seed):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class Run:
    """Everything one seed's stages share: config, device, world, datasets, output folder.
    control=True is the control world: the same, but the demonstrator never signs (signature_p = 0)."""

    def __init__(self, cfg, seed, control=False):
        if control:
            cfg = dataclasses.replace(cfg, signature_p=0.0)
        self.cfg, self.seed, self.control = cfg, seed, control
        self.device = get_device(cfg.device)
        self.dir = os.path.join(cfg.out_dir, f"seed_{seed}", *(["control"] if control else []))
        self.times = {}
        t0 = time.time()   # stage 0, the world: deterministic and cheap, so rebuilt on every run rather than saved
        self.tok = load_tokenizer()
        self.world = World(cfg.world_config(), self.tok)
        self.data = self.world.make_datasets(seed, cfg.n_base, cfg.n_demo, cfg.n_pref, cfg.n_eval)
        enc = self.world.encode_response
        self.base = [(p.tokens, enc(r)) for p, r in self.data["base"]]
        self.demos = [(p.tokens, enc(r)) for p, r in self.data["demos"]]
        self.demo_prompts = [p for p, _ in self.data["demos"]]
        self.times["world"] = time.time() - t0

    def begin(self, stage):
        """Seed each stage on its own, so that a resumed run draws exactly what an uninterrupted one does."""
        k = STAGES.index(stage)
        self.rng = np.random.default_rng((self.seed, k))   # minibatches and prompts, apart from the world's
        torch.manual_seed(self.seed * 1000 + k)

    def path(self, name):
        if self.control and name.startswith("pretrain"):   # π_init is shared: the base corpus is never signed
            return os.path.join(os.path.dirname(self.dir), name)
        return os.path.join(self.dir, name)

    def gpt_config(self):
        c = self.cfg
        return GPTConfig(block_size=max(len(p) for p, _ in self.base + self.demos) + c.max_new_tokens,
                         vocab_size=self.world.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)

    def load(self, name):
        """(model, extra) of <name>.pt. A file that does not load (corrupt, truncated) is one line naming it and
        the stage that rewrites it."""
        path = self.path(name + ".pt")
        try:
            return load_checkpoint(path, device=self.device)
        except Exception as e:
            raise StageError(f"{path} does not load ({type(e).__name__}: {str(e)[:80]}); recompute it with "
                             f"--redo={'control' if self.control else writer_of(name)}") from None

    def rollout(self, model, prompts, seed):
        """Sample one response per prompt (token lists) at temperature 1: a Rollout, log-probs included."""
        return sample(model, prompts, self.cfg.max_new_tokens, self.world.eos_id,
                      generator=new_generator(self.device, seed))

    def sample_responses(self, model, prompts, seed, chunk=512):
        """Response token lists for many prompts, sampled in chunks to bound memory."""
        out = []
        for i in range(0, len(prompts), chunk):
            out += responses_of(self.rollout(model, prompts[i:i + chunk], seed + i))
        return out

    def batch(self, pairs, idx):
        return to_batch([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], self.world.eos_id, self.device)


# -----------------------------------------------------------------------------------------------------------
# Stage 1, pretrain: π_init, a small GPT pretrained on the base corpus (next-token prediction on whole sequences).

def stage_pretrain(run):
    cfg = run.cfg
    model = GPT(run.gpt_config()).to(run.device)
    opt = model.configure_optimizer(0.1, cfg.pretrain_lr, device_type=run.device.type)
    losses = []
    for step in (pbar := bar(cfg, range(cfg.pretrain_steps), "pretrain")):
        lr_schedule(opt, cfg.pretrain_lr, step, cfg.pretrain_steps)
        idx = run.rng.integers(len(run.base), size=cfg.pretrain_batch)
        # maximum likelihood, as SFT's, but every token after the first is a target: the base model learns
        # prompts and responses alike
        seqs = [run.base[i][0] + run.base[i][1] for i in idx]
        tokens, mask = to_batch([s[:1] for s in seqs], [s[1:] for s in seqs], run.world.eos_id, run.device)
        with autocast(run.device):
            loss = obj.sft_loss(token_logprobs(model, tokens, mask), mask)
        optimiser_step(opt, model, loss, "pretrain", step)
        losses.append(loss.item())
        pbar.set_postfix(loss=f"{loss.item():.3f}")
    return model, {"curve": losses}


def lr_schedule(opt, peak, step, total, warmup=20):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    w = min(warmup, total // 10 + 1)
    lr = peak * (step + 1) / w if step < w else \
        peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - w) / max(1, total - w))))
    for group in opt.param_groups:
        group["lr"] = lr


# -----------------------------------------------------------------------------------------------------------
# Stage 2, sft: π_SFT = argmin_π KL(β ‖ π), i.e. maximum likelihood on the demonstrations' response tokens.

def stage_sft(run):
    cfg = run.cfg
    model, _ = run.load("pretrain")
    opt = model.configure_optimizer(0.0, cfg.sft_lr, device_type=run.device.type)
    losses = []
    for step in (pbar := bar(cfg, range(cfg.sft_steps), "sft")):
        lr_schedule(opt, cfg.sft_lr, step, cfg.sft_steps)
        tokens, mask = run.batch(run.demos, run.rng.integers(len(run.demos), size=cfg.sft_batch))
        with autocast(run.device):
            loss = obj.sft_loss(token_logprobs(model, tokens, mask), mask)   # forward KL, prompt masked
        optimiser_step(opt, model, loss, "sft", step)
        losses.append(loss.item())
        pbar.set_postfix(nll=f"{loss.item():.3f}")
    return model, {"curve": losses}


# -----------------------------------------------------------------------------------------------------------
# Stages 3-8, the policies of methods.POLICIES trained by policy optimisation: reverse KL and Jensen–Shannon by a
# learned discriminator (adversarial: rkl_seq, rkl_tok, js, rkl_seq_scalar) or the exact one (oracle: rkl_oracle,
# js_oracle), and stage 11's rl_init_sft. One policy-gradient loop
# for every reward: a discriminator's (AIRL, GAIL; sequence- or token-level), the exact expert's (the oracle),
# or a reward model's (RL on the Init-SFT RM).
#   reward(y) = r(x, y) − kl_coef · [log π(y|x) − log π_SFT(y|x)]   (k1 penalty to the reference, in the reward)
#   advantage = leave-one-out over the group_size samples of each prompt, whitened (obj.kl_shaped_advantages),
#   then PPO-clipped steps.

def policy_optimisation(run, stage, reward_fn, disc=None, kl_coef=None):
    """reward_fn(prompts, roll, pi_logp) → (B,) or (B, T) rewards of the policy's samples, pi_logp their per-token
    log-probs under the current policy. With a Discriminator, it takes its steps on each batch first.
    kl_coef: the KL penalty's weight, cfg.kl_coef unless given."""
    cfg = run.cfg
    policy, _ = run.load("sft")
    ref, _ = run.load("sft")
    ref.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.pg_lr, weight_decay=0.0)
    disc_opt = torch.optim.AdamW(disc.model.parameters(), lr=cfg.disc_lr, weight_decay=0.0) if disc else None
    curve = {"disc_acc_expert": [], "disc_acc_policy": [], "reward": [], "kl_ref": []}
    for it in (pbar := bar(cfg, range(cfg.rl_iters), stage)):
        idx = run.rng.integers(len(run.demos), size=cfg.rl_prompts)
        prompts = [run.demo_prompts[i] for i in idx for _ in range(cfg.group_size)]   # groups of one prompt
        roll = run.rollout(policy, [p.tokens for p in prompts], seed=sampling_seed(run.seed, "rollout", it))
        tokens, mask, old_logp = roll.tokens, roll.response_mask, roll.logprobs
        with torch.no_grad(), autocast(run.device):
            pi_logp = token_logprobs(policy, tokens, mask)   # log π of the samples, by the scoring function
        if disc is not None:   # the discriminator: demonstrations (label 1) vs the policy's samples (label 0)
            for _ in range(cfg.disc_steps):   # balanced classes: as many demonstrations as policy samples
                demo_tokens, demo_mask = run.batch(run.demos, run.rng.integers(len(run.demos), size=len(prompts)))
                with torch.no_grad(), autocast(run.device):
                    demo_pi_logp = token_logprobs(policy, demo_tokens, demo_mask) if disc.form == "airl" else None
                acc_demo, acc_pol = disc_step(run, disc, disc_opt, (demo_tokens, demo_mask, demo_pi_logp),
                                              (tokens, mask, pi_logp), stage, it)
            curve["disc_acc_expert"].append(acc_demo)
            curve["disc_acc_policy"].append(acc_pol)
        with torch.no_grad():
            reward = reward_fn(prompts, roll, pi_logp)                      # (B,) or (B,T) token rewards
            ref_logp = token_logprobs(ref, tokens, mask)
            k1 = obj.kl_k1(old_logp, ref_logp) * mask                     # per-token log π − log π_SFT
            adv = obj.kl_shaped_advantages(reward, k1, mask, cfg.kl_coef if kl_coef is None else kl_coef,
                                           cfg.group_size)
        for _ in range(cfg.ppo_epochs):
            with autocast(run.device):
                logp = token_logprobs(policy, tokens, mask)
            loss = obj.ppo_clip_loss(logp, old_logp, adv, mask, cfg.clip_eps)
            optimiser_step(opt, policy, loss, stage, it)
        mean_reward = (reward.sum(-1) if reward.dim() == 2 else reward).mean().item()
        curve["reward"].append(mean_reward)
        curve["kl_ref"].append(k1.sum(-1).mean().item())
        pbar.set_postfix(reward=f"{mean_reward:.2f}", kl=f"{curve['kl_ref'][-1]:.2f}")
    return policy, {"curve": curve}


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


def new_discriminator(start, form, level):
    """A discriminator that starts from the language model `start` (π_SFT for adversarial imitation, the negative
    class's model for a reward model) at h = 0 on start's own samples: the AIRL form's q_φ is a copy of start
    (h = log start − log π, 0 while π = start), the scalar form a zero-initialised head on start's backbone."""
    model = copy.deepcopy(start) if form == "airl" else ScalarGPT.from_lm(start)
    return Discriminator(model.requires_grad_(True).to(next(start.parameters()).device), form, level)


def disc_step(run, disc, opt, demo, pol, stage, step):
    """One discriminator step on (tokens, mask, pi_logp) batches of demonstrations (label 1) and policy samples
    (label 0); returns its accuracy on each, measured before the step: (h > 0) on demonstrations, (h < 0) on
    samples. Token level: every response token is one (state, action) example of its class."""
    with autocast(run.device):
        h_demo, h_pol = disc.logits(*demo), disc.logits(*pol)
        if disc.level == "seq":
            loss = obj.discriminator_loss(h_demo, h_pol)
        else:
            loss = obj.discriminator_loss(h_demo, h_pol, demo[1], pol[1])
            h_demo, h_pol = h_demo[demo[1]], h_pol[pol[1]]
    optimiser_step(opt, disc.model, loss, stage, step)
    return (h_demo > 0).float().mean().item(), (h_pol < 0).float().mean().item()


def stage_adversarial(run, method):
    method_ = POLICY[method]
    cfg = run.cfg
    sft, _ = run.load("sft")
    disc = new_discriminator(sft, method_.form or cfg.disc, method_.level)
    if cfg.disc_warmup:   # first a classifier of demonstrations vs π_SFT's samples: the first rewards mean something
        opt = torch.optim.AdamW(disc.model.parameters(), lr=cfg.disc_lr, weight_decay=0.0)
        prompts = [p for p, _ in run.demos[:cfg.rm_samples]]
        samples = list(zip(prompts, run.sample_responses(sft, prompts, seed=sampling_seed(run.seed, "disc_warmup"))))
        b = cfg.rl_prompts * cfg.group_size
        for step in bar(cfg, range(cfg.disc_warmup), f"{method} D"):
            batches = [run.batch(data, run.rng.integers(len(data), size=b)) for data in (run.demos, samples)]
            with torch.no_grad(), autocast(run.device):   # the policy is π_SFT throughout the warm-up
                batches = [(t, m, token_logprobs(sft, t, m)) for t, m in batches]
            disc_step(run, disc, opt, *batches, method, step)

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), autocast(run.device):
            return method_.transform(disc.logits(roll.tokens, roll.response_mask, pi_logp).float())

    policy, extra = policy_optimisation(run, method, reward_fn, disc)
    save_checkpoint(run.path(method + "_disc.pt"), disc.model)
    return policy, extra


def stage_oracle(run, method):
    """The exact discriminator D* = β/(β + π): its logit log β(y|x) − log π(y|x) needs the expert's density, which
    only our world has. rkl_oracle takes the AIRL reward of it (the exact reverse-KL reward), js_oracle the GAIL
    reward (the exact Jensen–Shannon reward): what each learned discriminator's objective asks for. Both run in
    the same KL-penalised, PPO-clipped loop as the learned ones, so only the reward differs."""
    transform = POLICY[method].transform

    def reward_fn(prompts, roll, pi_logp):
        return transform(oracle_reward(run.world, prompts, responses_of(roll),
                                       obj.sequence_logprob(pi_logp, roll.response_mask)))
    return policy_optimisation(run, method, reward_fn)


def oracle_reward(world, prompts, responses, policy_logp_seq):
    """The oracle's reward r(y) = log β(y|x) − log π(y|x) (= −reverse_kl_mc) of the policy's responses (token
    lists), whose log π(y|x) are policy_logp_seq (B,); log β is the world's, exact. Maximising E_π[r] minimises
    KL(π ‖ β) (objectives.reverse_kl_reinforce_loss)."""
    expert = torch.tensor(world.expert_logprobs(prompts, responses), dtype=torch.float32,
                          device=policy_logp_seq.device)
    return -obj.reverse_kl_mc(policy_logp_seq, expert)


# -----------------------------------------------------------------------------------------------------------
# Stage 9, reward_models: reward extrapolation. A reward model is a discriminator trained once, on fixed samples: a binary
# classifier (positives 1, negatives 0) whose logit is the reward. By default in AIRL's log-ratio form,
#   r(x, y) = log q_φ(y|x) − log π_neg(y|x),   q_φ initialised from π_neg, the negative class's model,
# so r = 0 at the start and, at the BCE optimum, r = log p_pos − log p_neg (objectives.classifier_optimum):
#   Init-SFT (the paper's): positives π_SFT samples, negatives π_init samples → log π_SFT − log π_init
#   Init-Demo, SFT-Demo (ablations): positives the demonstrations → log β − log π_init, log β − log π_SFT
#   pairwise_bt: Bradley–Terry on the gold preference pairs (log-ratio form: DPO's implicit reward, β = 1)
#   init_sft_scalar: the Init-SFT classifier with a scalar head on π_init's backbone (the ablation)
# (methods.REWARD_MODELS: the classes, q_φ's starting point and the form of each)


def reward_model_names(run):
    """The learned reward models a world trains: all of them, or the three the control world compares
    (stage_files lists their checkpoints the same way)."""
    return CONTROL_LEARNED if run.control else LEARNED


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
        with autocast(run.device):
            return rm.logits(tokens, mask, ref)

    def loss_of(p, n):
        return obj.bradley_terry_loss(p, n) if pairwise else obj.classifier_reward_loss(p, n)

    curve = {"loss": [], "heldout_loss": [], "heldout_step": []}
    for step in (pbar := bar(cfg, range(cfg.rm_steps), f"rm {name}")):
        if step % max(1, cfg.rm_steps // 4) == 0 or step == cfg.rm_steps - 1:   # watch for overfitting
            with torch.no_grad():
                held = [logits(pairs, range(len(pairs))) for pairs in (held_pos, held_neg)]
            curve["heldout_loss"].append(loss_of(*held).item())
            curve["heldout_step"].append(step)
        i_pos = run.rng.integers(len(pos), size=cfg.rm_batch // 2)
        i_neg = i_pos if pairwise else run.rng.integers(len(neg), size=cfg.rm_batch // 2)
        loss = loss_of(logits(pos, i_pos), logits(neg, i_neg))
        optimiser_step(opt, rm.model, loss, f"reward_models ({name})", step)
        curve["loss"].append(loss.item())
        pbar.set_postfix(loss=f"{loss.item():.3f}")
    save_checkpoint(run.path(f"rm_{name}.pt"), rm.model, form=form, base=REWARD_MODEL[name].base)
    return curve


def load_reward_model(run, name):
    """The reward function r(tokens, mask) → (B,) of a trained reward model: its logit."""
    model, extra = run.load(f"rm_{name}")
    rm = Discriminator(model, extra["form"], "seq")
    base = run.load(extra["base"])[0] if extra["form"] == "airl" else None   # π_neg, the log-ratio's reference
    return lambda tokens, mask: rm.logits(tokens, mask, token_logprobs(base, tokens, mask) if base else None)


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
        data[key] = list(zip(prompts, run.sample_responses(models[stage], prompts,
                                                           seed=sampling_seed(run.seed, f"rm_{key}"))))
        held_data[key] = list(zip(held_prompts, run.sample_responses(models[stage], held_prompts,
                                                                     seed=sampling_seed(run.seed, f"rm_{key}_heldout"))))
    enc = run.world.encode_response
    pref = [((p.tokens, enc(c)), (p.tokens, enc(r))) for p, c, r in run.data["pref"]]
    n_held_pref = min(128, max(2, len(pref) // 8))
    data["chosen"], data["rejected"] = [c for c, _ in pref[n_held_pref:]], [r for _, r in pref[n_held_pref:]]
    held_data["chosen"], held_data["rejected"] = [c for c, _ in pref[:n_held_pref]], [r for _, r in pref[:n_held_pref]]
    curves = {}
    for name in reward_model_names(run):
        r = REWARD_MODEL[name]
        curves[name] = train_reward_model(run, name, models[r.base], data[r.pos], data[r.neg], held_data[r.pos],
                                          held_data[r.neg], r.form or cfg.disc, pairwise=r.pairwise)
    return None, {"curves": curves}


# -----------------------------------------------------------------------------------------------------------
# Stage 10, best_of_n: Best-of-N over π_SFT's samples, ranked by each reward model, by each classifier's exact
# optimum, and by the gold reward (the ceiling).

@torch.no_grad()
def score(run, model, pairs, fn, chunk=512):
    """fn(model, tokens, mask) over a list of (prompt, response) token pairs, in chunks."""
    with autocast(run.device):
        out = [fn(model, *run.batch(pairs, range(i, min(i + chunk, len(pairs)))))
               for i in range(0, len(pairs), chunk)]
    return torch.cat(out).float().cpu()


def seq_logprob(model, tokens, mask):
    return obj.sequence_logprob(token_logprobs(model, tokens, mask), mask)


def stage_best_of_n(run):
    """Best-of-N over π_SFT: N samples per prompt, keep the one the reward model ranks highest."""
    cfg = run.cfg
    init, _ = run.load("pretrain")
    sft, _ = run.load("sft")
    prompts = run.data["eval_prompts"][:cfg.bon_prompts]
    N = cfg.bon_max_n
    flat = [p for p in prompts for _ in range(N)]
    pairs = list(zip([p.tokens for p in flat],
                     run.sample_responses(sft, [p.tokens for p in flat], seed=sampling_seed(run.seed, "best_of_n"))))
    rewards = {name: score(run, load_reward_model(run, name), pairs, lambda rm, t, k: rm(t, k))
               for name in bar(cfg, reward_model_names(run), "best_of_n")}
    # each classifier's exact optimum, log p_pos − log p_neg: what its objective asks for (our world knows log β)
    logp = {"init": score(run, init, pairs, seq_logprob), "sft": score(run, sft, pairs, seq_logprob),
            "demos": torch.tensor(run.world.expert_logprobs(flat, [r for _, r in pairs]), dtype=torch.float32)}
    for name in OPTIMA:
        rewards[name] = obj.classifier_optimum(logp[REWARD_MODEL[name].pos], logp[REWARD_MODEL[name].neg])
    gold = torch.tensor([run.world.gold_reward(p, r) for p, (_, r) in zip(flat, pairs)])
    rewards["gold"] = gold
    off = torch.tensor([run.world.mode(p, r) == "off" for p, (_, r) in zip(flat, pairs)], dtype=torch.float32)
    bon = {name: best_of_n_curve(r, gold, off, N) for name, r in rewards.items()}
    vs_optimum = {f"{name}_vs_optimum": {"pearson": pearson(rewards[name], rewards[opt]),
                                         "spearman": spearman(rewards[name], rewards[opt])}
                  for name, opt in LEARNED_VS_OPTIMUM.items() if name in rewards}
    return None, {"bon": bon, "reward_models": vs_optimum}


def best_of_n_curve(reward, gold, off, N):
    """Best-of-n for n = 1, 2, 4, ..., N from N samples of each prompt, prompt-major (sample j of prompt i at
    i·N + j): the candidate `reward` ranks highest among n, and the mean gold reward and off-support rate (off:
    0/1) of the picks. N samples per prompt = N/n disjoint draws of Best-of-n: an average over all of them."""
    res = {"n": [], "kl": [], "gold_reward": [], "off_support": []}
    n = 1
    while n <= N:
        pick = obj.best_of_n(reward.view(-1, n))
        res["n"].append(n)
        res["kl"].append(obj.best_of_n_kl(n))
        res["gold_reward"].append(gold.view(-1, n)[torch.arange(len(reward) // n), pick].mean().item())
        res["off_support"].append(off.view(-1, n)[torch.arange(len(reward) // n), pick].mean().item())
        n *= 2
    return res


def pearson(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def ranks(x):
    """Ranks 1..n of x, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    for start, c in zip(first, counts):   # tied runs, in sorted order: each gets the mean of its ranks
        if c > 1:
            r[order[start:start + c]] = start + (c + 1) / 2
    return r


def spearman(a, b):
    """Rank correlation: Pearson's r of the ranks. Robust to the log-ratio's heavy tail (off-support responses
    sit near −100 nats and would dominate Pearson's r)."""
    return pearson(ranks(a), ranks(b))


def auc(pos, neg):
    """P(a pos score > a neg score) + ½ P(tie): the area under the ROC curve (Mann–Whitney U / (n_pos n_neg)).
    None when a class is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    r = ranks(np.concatenate([np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


# -----------------------------------------------------------------------------------------------------------
# Stage 11, rl_init_sft: policy optimisation (the loop of stages 3-8) on the Init-SFT reward model.

def stage_rl_init_sft(run):
    """Beyond the paper: optimise π_SFT on the Init-SFT reward model, KL penalty to π_SFT (not just Best-of-N).

    Its own KL weight λ = rm_kl_coef, because the log-ratio reward has a scale of its own: at its optimum
    r = log π_SFT − log π_init, and the KL-regularised optimum max_π E_π[r] − λ KL(π ‖ π_SFT) is
        π* ∝ π_SFT · exp(r/λ) = π_SFT^(1 + 1/λ) · π_init^(−1/λ),
    1/λ steps past π_SFT along the Init-SFT direction. λ = 1 is one step; the adversarial runs' λ = 0.05 would
    be twenty, which a learned ratio does not survive (README, sensitivity)."""
    rm = load_reward_model(run, "init_sft")

    def reward_fn(prompts, roll, pi_logp):
        with torch.no_grad(), autocast(run.device):
            return rm(roll.tokens, roll.response_mask).float()
    return policy_optimisation(run, "rl_init_sft", reward_fn, kl_coef=run.cfg.rm_kl_coef)


# -----------------------------------------------------------------------------------------------------------
# Stage 12, control: stages 2, 9 and 10 again in the control world.

CONTROL_STAGES = ["sft", "reward_models", "best_of_n"]   # what the control world redoes, in order


def stage_control(run):
    """The control world: the same demonstrator without its signature. π_init is shared (the base corpus does not
    depend on it); SFT, the Init-SFT, Init-Demo and SFT-Demo reward models and Best-of-N are redone there, so that
    the gap between Init-SFT and the demonstration-based reward models can be seen with and without the
    demonstrator's style."""
    if not run.cfg.control:
        return None, {}
    ctrl = Run(run.cfg, run.seed, control=True)
    for stage in CONTROL_STAGES:
        extra = execute(ctrl, stage)
    return None, {"bon": extra["bon"], "reward_models": extra["reward_models"],
                  "demonstrations": {"gold_reward": demo_gold_reward(ctrl)}}


def demo_gold_reward(run):
    return float(np.mean(run.world.gold_rewards([p for p, _ in run.data["demos"]], [r for _, r in run.demos])))


# -----------------------------------------------------------------------------------------------------------
# Stage 13, evaluate: every policy of methods.POLICIES on held-out prompts, exactly: the world knows log β.


def stage_evaluate(run):
    cfg, world = run.cfg, run.world
    prompts = [p for p in run.data["eval_prompts"] for _ in range(cfg.eval_samples)]
    rng = np.random.default_rng(run.seed + EXPERT_SAMPLES_SEED)
    expert = list(zip([p.tokens for p in prompts],
                      [world.encode_response(world.expert_response(p, rng)) for p in prompts]))
    expert_on_expert = torch.tensor(world.expert_logprobs(prompts, [r for _, r in expert]), dtype=torch.float32)
    sft, _ = run.load("sft")
    policies, calibration, points = {}, {}, {}
    for name in (pbar := bar(cfg, [p.name for p in POLICIES], "evaluate")):
        if POLICY[name].kind == "expert":
            own, logp_own, logp_expert = expert, expert_on_expert, expert_on_expert
        else:
            model, _ = run.load(POLICY[name].checkpoint)
            own = list(zip([p.tokens for p in prompts],
                           run.sample_responses(model, [p.tokens for p in prompts],
                                                sampling_seed(run.seed, "evaluate"))))
            logp_own = score(run, model, own, seq_logprob)
            logp_expert = score(run, model, expert, seq_logprob)   # the policy's log-prob of expert samples
        responses = [r for _, r in own]
        beta_own = torch.tensor(world.expert_logprobs(prompts, responses), dtype=torch.float32)
        stats = describe(run, prompts, responses)
        stats["forward_kl"], stats["reverse_kl"] = policy_kls(beta_on_expert=expert_on_expert,
                                                              pi_on_expert=logp_expert,
                                                              pi_on_own=logp_own, beta_on_own=beta_own)
        if POLICY[name].kind != "expert":   # KL(π ‖ π_SFT): the x-axis of the reward-extrapolation figure
            stats["kl_sft"] = (logp_own - score(run, sft, own, seq_logprob)).mean().item()
        policies[name] = stats
        pbar.set_postfix(policy=name, reverse_kl=f"{stats['reverse_kl']:.2f}")
        if name in ADVERSARIAL:   # is the discriminator's logit the log density ratio it should be?
            disc = Discriminator(run.load(name + "_disc")[0], POLICY[name].form or cfg.disc, POLICY[name].level)
            logit = score(run, disc, own, lambda d, t, k: d.response_logits(t, k, token_logprobs(model, t, k)))
            true = beta_own - logp_own
            off = torch.tensor([m == "off" for m in modes_of(world, prompts, responses)])
            calibration[name] = {"pearson": pearson(logit, true), "spearman": spearman(logit, true),
                                 "auc_off_support": auc(logit[~off], logit[off])}
            keep = np.random.default_rng(CALIBRATION_POINTS_SEED).permutation(len(own))[:300]
            points[name] = {"logit": logit[keep].tolist(), "true": true[keep].tolist()}
    return None, {"policies": policies, "calibration": calibration, "calibration_points": points}


def policy_kls(beta_on_expert, pi_on_expert, pi_on_own, beta_on_own):
    """(KL(β ‖ π), KL(π ‖ β)), Monte Carlo, from sequence log-probs (B,) of two samples:
        forward  KL(β ‖ π) = mean over the expert's samples y ~ β of log β(y|x) − log π(y|x),
        reverse  KL(π ‖ β) = mean over the policy's own samples y ~ π of log π(y|x) − log β(y|x).
    beta_on_expert, pi_on_expert: log β and log π of the expert's samples; pi_on_own, beta_on_own: of π's."""
    return (obj.forward_kl_mc(beta_on_expert, pi_on_expert).mean().item(),
            obj.reverse_kl_mc(pi_on_own, beta_on_own).mean().item())


def modes_of(world, prompts, responses):
    return [world.mode(p, r) for p, r in zip(prompts, responses)]


def describe(run, prompts, responses):
    """Mode frequencies, off-support rate, mode entropy, diversity, gold reward and length of a sample."""
    world = run.world
    modes = modes_of(world, prompts, responses)
    freq = {m: modes.count(m) / len(modes) for m in world.mode_names}
    on = np.array([freq[m] for m in world.mode_names])
    on = on[on > 0] / on.sum() if on.sum() > 0 else np.ones(1)
    per_prompt = {}
    for p, r in zip(prompts, responses):
        per_prompt.setdefault(p.text, []).append(tuple(r))
    return {
        "off_support": modes.count("off") / len(modes),
        "mode_freq": freq,
        "mode_entropy": float(-(on * np.log(on)).sum()) + 0.0,   # among on-support responses, in nats (+ 0.0: no −0)
        "distinct": float(np.mean([len(set(v)) / len(v) for v in per_prompt.values()])),
        "gold_reward": float(np.mean([world.gold_reward(p, r) for p, r in zip(prompts, responses)])),
        "length": float(np.mean([len(r) for r in responses])),
    }


# -----------------------------------------------------------------------------------------------------------
# Running the stages: skip what is finished, reuse what another run computed with the same inputs, save
# atomically. metrics.json's layout is report.assemble's.

STAGE_FNS = {
    "pretrain": stage_pretrain, "sft": stage_sft,
    **{m: (lambda run, m=m: stage_adversarial(run, m)) for m in ADVERSARIAL},
    **{m: (lambda run, m=m: stage_oracle(run, m)) for m in ORACLES},
    "reward_models": stage_reward_models, "best_of_n": stage_best_of_n,
    "rl_init_sft": stage_rl_init_sft, "control": stage_control, "evaluate": stage_evaluate,
}
assert list(STAGE_FNS) == STAGES, "methods.STAGES and the stage functions disagree"


def stage_files(run, stage, control=False):
    """The files a stage writes under the run's directory, besides <stage>.json (control=True: in the control
    world's folder, where it trains only its own reward models)."""
    if stage == "control":   # its own folder: the control world's stages, each with its .json
        subs = CONTROL_STAGES if run.cfg.control else []
        return [os.path.join("control", f) for sub in subs for f in [sub + ".json", *stage_files(run, sub, True)]]
    if stage == "reward_models":
        return [f"rm_{name}.pt" for name in (CONTROL_LEARNED if control else LEARNED)]
    if stage in ("best_of_n", "evaluate"):
        return []
    return [stage + ".pt"] + ([stage + "_disc.pt"] if stage in ADVERSARIAL else [])


def writer_of(name):
    """The stage that writes <name>.pt."""
    if name.startswith("rm_"):
        return "reward_models"
    return name[:-len("_disc")] if name.endswith("_disc") else name


# What each stage's result depends on: the world (every stage), the options it reads, the stages it consumes.
WORLD = sorted(cli.WORLD_KNOBS | {"n_base", "n_demo", "n_pref", "n_eval"})
POLICY_OPTIMISATION = ["rl_iters", "rl_prompts", "group_size", "ppo_epochs", "clip_eps", "pg_lr"]


def reads(cfg, stage):
    """(the options stage reads, the stages whose results it consumes): what its fingerprint covers. Declared
    by hand: a stage that starts reading a new option must list it here, or a run that changes the option
    would reuse a stale result (tests/test_cli.py checks that every option is read by some stage)."""
    kind = POLICY[stage].kind if stage in POLICY else None
    if stage == "pretrain":
        return ["n_layer", "n_head", "n_embd", "pretrain_steps", "pretrain_batch", "pretrain_lr"], []
    if stage == "sft":
        return ["sft_steps", "sft_batch", "sft_lr"], ["pretrain"]
    if kind == "adversarial":
        return (POLICY_OPTIMISATION + ["kl_coef", "disc_steps", "disc_lr", "disc_warmup"]
                + ["disc"] * (POLICY[stage].form is None) + ["rm_samples"] * (cfg.disc_warmup > 0)), ["sft"]
    if kind == "oracle":
        return POLICY_OPTIMISATION + ["kl_coef"], ["sft"]
    if stage == "reward_models":
        return ["rm_samples", "rm_steps", "rm_batch", "rm_lr", "disc"], ["pretrain", "sft"]
    if stage == "best_of_n":
        return ["bon_prompts", "bon_max_n"], ["pretrain", "sft", "reward_models"]
    if kind == "rm_rl":
        return POLICY_OPTIMISATION + ["rm_kl_coef"], ["sft", "reward_models"]
    if stage == "control":   # stages sft, reward_models and best_of_n in the control world
        return ["control", *[o for s in CONTROL_STAGES for o in reads(cfg, s)[0]]], ["pretrain"]
    assert stage == "evaluate", stage
    return ["eval_samples", "disc"], ["pretrain", "sft", *[p.name for p in POLICIES if p.checkpoint not in
                                                            (None, "pretrain", "sft")]]


def code_version():
    """A hash of the code that computes results: a stage computed by other code is never reused. (The report,
    the exercises and the docs are not part of it.)"""
    root = os.path.dirname(os.path.abspath(__file__))
    names = ["afd_mini.py", "model.py", "objectives.py", "methods.py", "cli.py"] + \
        sorted(os.path.join("data", f) for f in os.listdir(os.path.join(root, "data"))
               if f.endswith((".py", ".tiktoken")))
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def stage_key(run, stage, keys):
    """What stage's result depends on apart from the code: the seed, the world, the options it reads, the keys of
    the stages it consumes, and how the numbers are computed (torch version, device, CPU threads: another thread
    count can change an adversarial result by nats). keys: the stages before it."""
    options, upstream = reads(run.cfg, stage)
    inputs = {"stage": stage, "seed": run.seed, "options": {k: getattr(run.cfg, k) for k in WORLD + options},
              "upstream": {s: keys[s] for s in upstream},
              "numerics": [torch.__version__, run.device.type, torch.get_num_threads()]}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(key):
    """A stage's fingerprint: its key and the code version. Equal fingerprints, equal results."""
    return hashlib.sha256(f"{key} {CODE_VERSION}".encode()).hexdigest()[:16]


def cache_root(cfg):
    """Where finished stages are shared between output directories: --cache, else $AFD_MINI_CACHE, else
    $XDG_CACHE_HOME/afd-mini (~/.cache/afd-mini). None with --cache=off."""
    if cfg.cache == "off":
        return None
    if cfg.cache != "auto":
        return cfg.cache
    return os.environ.get("AFD_MINI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "afd-mini")


def clear_cache(root, log):
    """Remove the cache's entries (folders holding an entry.json), nothing else."""
    n = 0
    for name in os.listdir(root) if os.path.isdir(root) else []:
        if os.path.exists(os.path.join(root, name, "entry.json")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            n += 1
    log(f"cache {root}: {n} entries removed")


def readable(path):
    """Whether a result file loads: JSON parses, a checkpoint unpickles."""
    try:
        if path.endswith(".json"):
            with open(path) as f:
                json.load(f)
        else:
            torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def read_stage(run, stage):
    """<stage>.json of a finished stage; one line naming the file and the fix if it does not parse."""
    path = run.path(stage + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise StageError(f"{path} is unreadable ({type(e).__name__}); recompute it with --redo={stage}") from None


def finished(run, stage, fp):
    """Whether <stage>.json in the run's directory holds this fingerprint's result, with every file it wrote."""
    if not os.path.exists(run.path(stage + ".json")):
        return False
    if read_stage(run, stage).get("fingerprint") != fp:
        return False   # written by other code, or on another thread count / device: recomputed
    for f in stage_files(run, stage):
        if not readable(os.path.join(run.dir, f)):
            raise StageError(f"{os.path.join(run.dir, f)} is missing or unreadable; recompute it with --redo={stage}")
    return True


def restore(run, stage, key, fp, log):
    """Copy a cached result of this key into the run's directory, if there is one with this fingerprint whose
    files all load. Returns the directory it was first computed in, or None."""
    root = cache_root(run.cfg)
    entry = os.path.join(root, key) if root else None
    if entry is None or not os.path.isdir(entry):
        return None
    files = stage_files(run, stage) + [stage + ".json"]
    try:
        with open(os.path.join(entry, "entry.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = None
    if meta is None or not all(readable(os.path.join(entry, f)) for f in files):
        log(f"seed {run.seed} · {stage}: cache entry {entry} is corrupt, ignored")
        return None
    if meta.get("fingerprint") != fp:
        log(f"seed {run.seed} · {stage}: cache entry {entry} is from another code version, ignored")
        return None
    for f in files:   # the stage's json last: it marks the stage finished
        os.makedirs(os.path.dirname(os.path.join(run.dir, f)), exist_ok=True)
        shutil.copyfile(os.path.join(entry, f), os.path.join(run.dir, f) + ".tmp")
        os.replace(os.path.join(run.dir, f) + ".tmp", os.path.join(run.dir, f))
    return meta["origin"]


def store(run, stage, key, fp, log):
    """Copy a finished stage into the cache (best effort: a cache that cannot be written is only a notice)."""
    root = cache_root(run.cfg)
    if root is None:
        return
    entry, tmp = os.path.join(root, key), os.path.join(root, f"{key}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for f in stage_files(run, stage) + [stage + ".json"]:
            os.makedirs(os.path.dirname(os.path.join(tmp, f)), exist_ok=True)
            shutil.copyfile(os.path.join(run.dir, f), os.path.join(tmp, f))
        write_json(os.path.join(tmp, "entry.json"), {"stage": stage, "fingerprint": fp, "origin": run.dir})
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"seed {run.seed} · {stage}: not cached ({e})")


def write_json(path, obj_):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj_, f, indent=1)
    os.replace(tmp, path)   # atomic: an interrupted write never leaves half a file


def result_config(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY | {"device", "seed"}}


NOW = {"stage": "start-up"}   # what is running, for the message on Ctrl-C


def execute(run, stage, fp=None):
    """Run one stage: its model (if any) to <stage>.pt, its results to <stage>.json, written last."""
    NOW["stage"] = f"seed {run.seed}, stage {stage}" + (" (control world)" if run.control else "")
    os.makedirs(run.dir, exist_ok=True)
    run.begin(stage)
    t0 = time.time()
    model, extra = STAGE_FNS[stage](run)
    if model is not None:
        save_checkpoint(run.path(stage + ".pt"), model)
    extra["seconds"] = time.time() - t0
    extra["fingerprint"] = fp
    write_json(run.path(stage + ".json"), extra)
    return extra


def run_seed(cfg, seed, log):
    """Every stage of one seed, in order: done earlier here (same fingerprint) → skipped; in the cache → copied;
    else computed (and cached). --redo=STAGE recomputes it and every stage after it."""
    run = Run(cfg, seed)
    os.makedirs(run.dir, exist_ok=True)
    write_json(run.path("config.json"), result_config(cfg))
    redo = cfg.redo.split(",")
    first_redo = 0 if "all" in redo else min([STAGES.index(s) for s in redo if s in STAGES], default=len(STAGES))
    keys = {}
    for i, stage in enumerate(STAGES):
        key = keys[stage] = stage_key(run, stage, keys)
        fp = fingerprint(key)
        if i == first_redo:   # recomputed, and every stage after it is stale: forget them before anything else
            for later in STAGES[i:]:
                if os.path.exists(run.path(later + ".json")):
                    os.remove(run.path(later + ".json"))
        if i < first_redo and finished(run, stage, fp):
            log(f"seed {seed} · {stage}: done earlier, skipped")
        elif i < first_redo and (origin := restore(run, stage, key, fp, log)):
            log(f"seed {seed} · {stage}: reused, same inputs as {origin}")
        else:
            extra = execute(run, stage, fp)
            store(run, stage, key, fp, log)
            log(f"seed {seed} · {stage}: {extra['seconds']:.1f} s")
        if stage == cfg.stop_after:
            log(f"stopped after {stage} (--stop_after); rerun without it to resume")
            return None
    metrics = report.assemble(lambda name: read_stage(run, name), seed, run.times["world"], demo_gold_reward(run),
                              dataclasses.asdict(cfg))
    write_json(run.path("metrics.json"), metrics)
    return metrics


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    unfinished = exercises.first_unfinished()   # in a student copy: point to the exercise, not a traceback
    if unfinished:
        print(f"afd_mini: {unfinished}", file=sys.stderr)
        return 1
    lock = None
    try:
        cfg = parse_args(argv)
        seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
        cli.check_out_dir(cfg.out_dir, seeds, result_config(cfg), cfg.redo)
        lock = cli.lock_out_dir(cfg.out_dir)   # held until this run ends (released below, or by the system)
        log = lambda s: tqdm.write(s, file=sys.stderr)   # one line per stage, bars or not
        if cfg.clear_cache and cache_root(cfg):
            clear_cache(cache_root(cfg), log)
        runs = []
        for seed in seeds:
            metrics = run_seed(cfg, seed, log)
            if metrics is None:
                return 0
            runs.append(metrics)
        mean, std = report.aggregate(runs)
        top = {**mean, "std": std, "seeds": seeds, "effects": report.effects(runs)}
        write_json(os.path.join(cfg.out_dir, "metrics.json"), top)
        report.write_report(cfg.out_dir, runs)
        print(report.summary(top, cfg.out_dir))
        return 0
    except UsageError as e:
        print(f"afd_mini: error: {e}", file=sys.stderr)
        return 2
    except StageError as e:
        print(f"afd_mini: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # stdout closed early (python afd_mini.py --help | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\nafd_mini: interrupted in {NOW['stage']}; finished stages are saved: rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.close()


CODE_VERSION = code_version()

if __name__ == "__main__":
    sys.exit(main())
