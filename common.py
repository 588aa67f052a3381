"""
common.py: what every stage of afd_mini.py shares, so that afd_mini.py holds the pipeline alone.

    Run              one seed's world, datasets, device and output folder: load and save a model, sample from it,
                     batch token pairs, the exact probe of DPO and SPIN (Run.probe)
    sampling_seed    the seed of every sampling call; stage_seed: each stage's numpy and torch streams
    optimiser_step   one clipped, checked optimiser step; lr_schedule: warm-up, then cosine decay
    score            a function of a model over many (prompt, response) pairs, in chunks

Its code computes results, so the stage cache's code hash covers it (runner.code_files follows afd_mini.py's
imports to it).
"""
import dataclasses
from dataclasses import dataclass
import functools
import math
import os
import time
import zlib

import numpy as np
import torch

import evaluation
import objectives as obj
import runner
from data import World, load_tokenizer
from model import GPTConfig, autocast, get_device, load_checkpoint, save_checkpoint, to_batch, token_logprobs
from sampling import sample

# -----------------------------------------------------------------------------------------------------------
# Random seeds, all in one place. Each stage reseeds numpy and torch from (seed, the stage's name) when it starts
# (Run.begin), so that a resumed run draws exactly what an uninterrupted one does, and a stage's draws depend
# neither on which stages ran before it nor on where it stands in STAGES: a new stage changes no other stage's
# numbers. The world's datasets come from World.make_datasets(seed). Sampling takes its own torch.Generator,
# seeded by purpose; two purposes may share a value (seed 0's first rollout and its Best-of-N samples), but they
# sample different models for different stages, so nothing measured depends on the coincidence.

def sampling_seed(seed, purpose, i=0):
    """The generator seed of one sampling call of the run with seed `seed`; i: the iteration (rollout, spin).
    Run.sample_responses adds each chunk's offset to it."""
    return {
        "rollout": seed * 100003 + i,       # policy optimisation: the policy's samples at iteration i
        "disc_warmup": seed * 7 + 3,        # π_SFT's samples for --disc_warmup
        "rm_init": seed * 7 + 1,            # the reward models' samples of π_init and π_SFT ...
        "rm_sft": seed * 7 + 2,
        "rm_init_heldout": seed * 7 + 101,  # ... and their held-out ones
        "rm_sft_heldout": seed * 7 + 102,
        "spin": seed * 7 + 4 + 1000 * i,    # SPIN's own samples at iteration i
        "control": seed * 7 + 5,            # π_SFT's samples, pg_control's positives
        "best_of_n": seed,                  # π_SFT's N samples of each Best-of-N prompt
        "evaluate": seed + 3000,            # every policy's evaluation samples
    }[purpose]


EXPERT_SAMPLES_SEED = 2000    # + seed: numpy's stream for the expert's evaluation samples (the world samples β)
FLOOR_SAMPLES_SEED = 4000     # + seed: numpy's stream for the floor's samples (the forward KL's ε-share)
CALIBRATION_POINTS_SEED = 0   # which 300 evaluation samples the calibration figure draws


def stage_seed(seed, name):
    """The seed of stage `name` of the run with seed `seed`: a hash of both, so it does not move when stages are
    added or reordered. The control world's stages share their main-world twin's (common random numbers: the
    two worlds differ in the signature alone)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.removeprefix("control_").encode())]).generate_state(1)[0])


# -----------------------------------------------------------------------------------------------------------
# Small helpers: one optimiser step; the learning-rate schedule; scoring many (prompt, response) pairs in chunks.

def optimiser_step(opt, model, loss, step, what=""):
    """One gradient step on a finite loss, gradients clipped to norm 1 (a bad batch cannot wreck the model)."""
    if not torch.isfinite(loss):   # the runner names the stage: one line, exit status 1
        raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {step}{what}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def lr_schedule(opt, peak, step, total, warmup=20):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    w = min(warmup, total // 10 + 1)
    lr = peak * (step + 1) / w if step < w else \
        peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - w) / max(1, total - w))))
    for group in opt.param_groups:
        group["lr"] = lr


@torch.no_grad()
def score(run, model, pairs, fn, chunk=512):
    """fn(model, tokens, mask) over a list of (prompt, response) token pairs, in chunks."""
    with run.autocast():
        out = [fn(model, *run.batch(pairs, range(i, min(i + chunk, len(pairs)))))
               for i in range(0, len(pairs), chunk)]
    return torch.cat(out).float().cpu()


def seq_logprob(model, tokens, mask):
    return obj.sequence_logprob(token_logprobs(model, tokens, mask), mask)


def expert_logprobs(world, prompts, responses):
    """log β(y|x) of responses (token lists) to prompts (data.Prompt), exact: the world knows β. (B,)"""
    return torch.tensor(world.expert_logprobs(prompts, responses), dtype=torch.float32)


def control_config(cfg):
    """The control world's options: the demonstrator never signs."""
    return dataclasses.replace(cfg, signature_p=0.0)


class Run:
    """Everything one seed's stages share: config, device, world, datasets, output folder.
    control=True is the control world: the same, but the demonstrator never signs (signature_p = 0)."""

    def __init__(self, cfg, seed, control=False):
        if control:
            cfg = control_config(cfg)
        self.cfg, self.seed, self.control = cfg, seed, control
        self.device = get_device(cfg.device)
        self.dir = os.path.join(runner.seed_dir(cfg.out_dir, seed), *(["control"] if control else []))
        t0 = time.time()   # stage 0, the world: deterministic and cheap, so rebuilt on every run rather than saved
        self.tok = load_tokenizer()
        self.world = World(cfg.world_config(), self.tok)
        self.data = self.world.make_datasets(seed, cfg.n_base, cfg.n_demo, cfg.n_pref, cfg.n_eval)
        enc = self.world.encode_response
        self.base = [(p.tokens, enc(r)) for p, r in self.data["base"]]
        self.demos = [(p.tokens, enc(r)) for p, r in self.data["demos"]]
        self.demo_prompts = [p for p, _ in self.data["demos"]]
        self.world_seconds = time.time() - t0

    @functools.cached_property
    def control_world(self):
        return Run(self.cfg, self.seed, control=True)

    def begin(self, stage):
        """Seed each stage on its own, so that a resumed run draws exactly what an uninterrupted one does."""
        self.rng = np.random.default_rng(stage_seed(self.seed, stage))   # minibatches and prompts
        torch.manual_seed(stage_seed(self.seed, stage))

    def autocast(self):
        return autocast(self.device, self.cfg.dtype)

    def bar(self, iterable, desc):
        return runner.progress(iterable, desc, self.cfg.progress)

    def path(self, name):
        if self.control and name.startswith("pretrain"):   # π_init is shared: the base corpus is never signed
            return os.path.join(os.path.dirname(self.dir), name)
        return os.path.join(self.dir, name)

    def gpt_config(self):
        c = self.cfg
        return GPTConfig(block_size=max(len(p) for p, _ in self.base + self.demos) + c.max_new_tokens,
                         vocab_size=self.world.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)

    def load(self, name):
        """(model, extra) of <name>.pt; a file that does not load (corrupt, truncated) is one line naming it."""
        path = self.path(name + ".pt")
        try:
            return load_checkpoint(path, device=self.device)
        except Exception as e:
            raise runner.UnreadableFile(path, f"{type(e).__name__}: {str(e)[:80]}") from None

    def save(self, name, model, **extra):
        save_checkpoint(self.path(name + ".pt"), model, **extra)

    def rollout(self, model, prompts, seed):
        """Sample one response per prompt (token lists) at temperature 1: a Rollout, log-probs included."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return sample(model, prompts, self.cfg.max_new_tokens, self.world.eos_id, generator=generator)

    def sample_responses(self, model, prompts, seed, chunk=512):
        """Response token lists for many prompts, sampled in chunks to bound memory."""
        out = []
        for i in range(0, len(prompts), chunk):
            out += self.rollout(model, prompts[i:i + chunk], seed + i).responses()
        return out

    def sample_pairs(self, model, prompts, seed):
        """(prompt tokens, response tokens) pairs, one response of `model` per prompt (token lists)."""
        return list(zip(prompts, self.sample_responses(model, prompts, seed)))

    def batch(self, pairs, idx):
        return to_batch([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], self.world.eos_id, self.device)

    @functools.cached_property
    def probe_support(self):
        return evaluation.support_of(self.world, self.data["eval_prompts"][:self.cfg.probe_prompts], self.device)

    def probe(self, model):
        """Exact numbers of `model` on the expert's support of the first probe_prompts held-out prompts
        (evaluation.support_metrics: off-support rate, the support's share of the forward KL, ...): what DPO and
        SPIN log as they train, without sampling."""
        with self.autocast():
            log_pi = evaluation.tree_logprobs(model, self.probe_support.batches).numpy()
        return evaluation.support_metrics(self.probe_support, log_pi, self.world.mode_names)


@dataclass
class Scored:
    """Samples of one distribution, each with its log-probability under the policy and under the expert,
    computed next to the sample it belongs to (scored)."""
    pairs: list            # (prompt tokens, response tokens)
    log_pi: torch.Tensor   # log π(y|x), (B,)
    log_beta: torch.Tensor  # log β(y|x), (B,)


def scored(run, model, prompts, responses):
    """Scored samples: responses (token lists) to prompts (data.Prompt); model None is the expert itself."""
    pairs, log_beta = list(zip([p.tokens for p in prompts], responses)), expert_logprobs(run.world, prompts, responses)
    return Scored(pairs, log_beta if model is None else score(run, model, pairs, seq_logprob), log_beta)
