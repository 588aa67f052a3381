"""
Benchmark of the pipeline's model paths (model.py, sampling.py) on the default run's model and data. A benchmark,
not a test: the numbers depend on the machine and on whatever else it is running.

- training tokens/s of a pretraining step as the pipeline takes it (a batch of the base corpus,
  token_logprobs on packed rows → sft_loss → backward → AdamW), beside the same step on the right-padded batch
  with our GPT (nanoGPT's forward(x, targets)) and with a plain nanoGPT-style model of the same size defined below.
  packed / plain is what the pipeline's path gains over a plain model; padded / plain is what the plumbing for
  masks and positions in model.py costs on the same work. Tokens are the batch's own, padding not counted;
- scoring tokens/s: the same three without gradients (log-probs of 512 demonstrations' response tokens, as the
  pipeline scores samples for its rewards and KLs);
- sampling tokens/s of sampling.sample with the KV cache, and without it (the whole context recomputed every
  step, as nanoGPT's generate does), and their ratio, the KV cache speed-up. The model is freshly initialised,
  so almost every response runs to max_new_tokens (a trained one stops sooner);
- peak memory: of the accelerator on CUDA, of the whole process (RSS, torch and the world's data included)
  on CPU.

Each measurement alternates the contenders and keeps the best round, which is the least disturbed by other
work on the machine.

    python bench.py              # a table
    python bench.py --json       # the same numbers as one JSON object
    python bench.py --device=cuda
    python bench.py --rounds=10  # more rounds: steadier numbers on a busy machine
    python bench.py --pipeline   # also the default run's per-stage profile, and a classroom experiment after it
                                 # reusing its stages (about 4 minutes on 2 CPU cores)
    python bench.py --processes=quick   # also --seeds=2 in one process, then in two (torchrun): --processes=default
                                        # times the default run's (about 10 minutes on 2 CPU cores)
    python bench.py --eval_noise=out/seed_0     # not speed: how much the evaluation of one run's checkpoints moves
                                                # when they are evaluated again with other samples (exact vs sampled)
    python bench.py --discriminators=out/seed_0  # not speed: each log-ratio discriminator's q_φ as a language model,
                                                 # exactly: does the BCE push it off the expert's support?

On CPU the numbers depend on the number of threads torch uses (OMP_NUM_THREADS), which is printed.
"""

import argparse
import copy
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import console
from model import GPT, IGNORE_INDEX, MPS_UNTESTED, autocast, get_device, to_batch, token_logprobs
from objectives import sft_loss
from sampling import sample

TRAIN_STEPS = 10  # pretraining steps per timed call
SCORE_BATCH = 512  # (prompt, response) pairs scored at once, the pipeline's chunk
SAMPLE_BATCH = 256  # prompts per sampling call (the pipeline samples up to 512 at once)
ROUNDS = 3


class PlainBlock(nn.Module):
    """nanoGPT's block written plainly: causal attention through the same fused kernel, no
    masks, no cache."""

    def __init__(self, c):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.c_attn, self.attn_proj = nn.Linear(c.n_embd, 3 * c.n_embd), nn.Linear(c.n_embd, c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))
        self.n_head = c.n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class PlainGPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.Sequential(*[PlainBlock(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_rounds(contenders, device, rounds=ROUNDS):
    """{name: best seconds} over rounds rounds, each running every contender once, after one
    untimed warm-up each."""
    for fn in contenders.values():
        fn()
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            best[name] = min(best[name], timed(fn, device))
    return best


def padded(tokens, mask):
    """The padded batch as nanoGPT takes it: inputs x, and targets y with IGNORE_INDEX where the token is not a
    response token (the prompt, the padding)."""
    return tokens[:, :-1], tokens[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)


def packed_loss(model, tokens, mask):
    return sft_loss(token_logprobs(model, tokens, mask), mask)   # the pipeline's maximum likelihood


def padded_loss(model, tokens, mask):
    return model(*padded(tokens, mask))[1]


def padded_logprobs(model, tokens, mask):
    x, y = padded(tokens, mask)
    logp = F.log_softmax(model(x)[0].float(), dim=-1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    return logp.masked_fill(y == IGNORE_INDEX, 0.0)


def train_fn(loss_fn, model, optimizer, batches, device):
    def run():
        for tokens, mask in batches:
            with autocast(device):
                loss = loss_fn(model, tokens, mask)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return run


def score_fn(logprobs_fn, model, tokens, mask, device):
    @torch.no_grad()
    def run():
        with autocast(device):
            logprobs_fn(model, tokens, mask)
    return run


def main():
    console.utf8_output()
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per measurement (best one kept)")
    parser.add_argument("--pipeline", action="store_true",
                        help="also profile one seed of the default run by stage, and time --kl_coef=0.5 after it")
    parser.add_argument("--processes", default="", metavar="PRESET",
                        help="also time --seeds=2 of PRESET (quick or default) in one process with every core, "
                             "and spread over two processes by torchrun, the cores split between them")
    parser.add_argument("--eval_noise", default="", metavar="SEED_DIR",
                        help="only this: evaluate the checkpoints of one finished seed (e.g. out/seed_0) --repeats "
                             "times with other evaluation samples, and print each metric's spread, exact and sampled")
    parser.add_argument("--repeats", type=int, default=6, help="evaluations for --eval_noise")
    parser.add_argument("--policies", default="sft,rkl_seq,pg_control", help="the policies --eval_noise evaluates")
    parser.add_argument("--discriminators", default="", metavar="SEED_DIR",
                        help="only this: the exact off-support mass and KLs of each AIRL-form discriminator's q_φ of "
                             "one finished seed, beside π_SFT's")
    args = parser.parse_args()
    if args.discriminators:
        return discriminators(args.discriminators, args.json)
    if args.eval_noise:
        return eval_noise(args.eval_noise, args.repeats, args.policies.split(","), args.json)
    import afd_mini
    device = get_device(args.device)
    if device.type == "mps":
        print(MPS_UNTESTED, file=sys.stderr)
    run = afd_mini.Run(afd_mini.Config(device=device.type, progress=False), 0)   # the default run's world and data
    cfg, config, eos = run.cfg, run.gpt_config(), run.world.eos_id   # config: the model of --preset=default
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)

    # Training: pretraining batches as stage_pretrain draws them (the first token the "prompt"). Ours twice (one
    # copy per path) with its own optimizer set-up, the plain model with nanoGPT's (fused AdamW on CUDA).
    draws = torch.randint(len(run.base), (TRAIN_STEPS, cfg.pretrain_batch), generator=rng).tolist()
    seqs = [[run.base[i][0] + run.base[i][1] for i in step] for step in draws]
    batches = [to_batch([s[:1] for s in step], [s[1:] for s in step], eos, device) for step in seqs]
    ours = GPT(config).to(device)
    models = {"packed": ours, "padded": copy.deepcopy(ours), "plain": PlainGPT(config).to(device)}
    optimizers = {name: m.configure_optimizer(0.1, 1e-4, device_type=device.type) for name, m in models.items()
                  if name != "plain"}
    optimizers["plain"] = torch.optim.AdamW(models["plain"].parameters(), lr=1e-4, betas=(0.9, 0.95),
                                            **({"fused": True} if device.type == "cuda" else {}))
    losses = {"packed": packed_loss, "padded": padded_loss, "plain": padded_loss}
    train = best_rounds({name: train_fn(losses[name], models[name], optimizers[name], batches, device)
                         for name in models}, device, args.rounds)
    train_tokens = sum(int(m.sum()) + len(m) for _, m in batches)   # every real token: the first, then the targets

    # Scoring: the log-probs of demonstrations' response tokens, no gradients.
    tokens, mask = run.batch(run.demos, range(SCORE_BATCH))
    logprobs = {"packed": token_logprobs, "padded": padded_logprobs, "plain": padded_logprobs}
    scoring = best_rounds({name: score_fn(logprobs[name], models[name], tokens, mask, device) for name in models},
                          device, args.rounds)
    score_tokens = sum(len(p) + len(r) for p, r in run.demos[:SCORE_BATCH])

    # Sampling: a fresh model, same prompts and seed for both, so both produce the same tokens.
    model = GPT(config).to(device)
    prompts = [p for p, _ in run.demos[:SAMPLE_BATCH]]
    produced = {}

    def sampler(use_cache):
        def go():
            gen = torch.Generator(device=device).manual_seed(0)
            roll = sample(model, prompts, cfg.max_new_tokens, eos, generator=gen, use_cache=use_cache)
            produced[use_cache] = int(roll.response_mask.sum())
        return go
    sampling = best_rounds({"cached": sampler(True), "uncached": sampler(False)}, device, args.rounds)

    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    elif sys.platform != "win32":  # ru_maxrss is KiB on Linux, bytes on macOS; Windows has no resource module
        import resource
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    else:
        peak_mib = None

    results = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "params": ours.num_params(),
        **{f"train_tokens_per_s_{name}": train_tokens / sec for name, sec in train.items()},
        **{f"score_tokens_per_s_{name}": score_tokens / sec for name, sec in scoring.items()},
        "sample_tokens_per_s_cached": produced[True] / sampling["cached"],
        "sample_tokens_per_s_uncached": produced[False] / sampling["uncached"],
        "sample_tokens": produced[True],
        "peak_memory_mib": peak_mib,
    }
    for what, seconds in (("train", train), ("score", scoring)):
        for name in ("packed", "padded"):
            results[f"{what}_{name}_vs_plain"] = seconds["plain"] / seconds[name]
    results["cache_speedup"] = results["sample_tokens_per_s_cached"] / results["sample_tokens_per_s_uncached"]
    if args.pipeline:
        results["pipeline"] = pipeline(device)
    if args.processes:
        results["processes"] = walls = processes(args.processes)
        results["processes_speedup"] = list(walls.values())[0] / list(walls.values())[1]
    if args.json:
        print(json.dumps(results))
        return
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak process RSS (torch, world included)"
    rows = [
        ("device", results["device"]),
        ("torch threads", results["threads"]),
        ("parameters", f"{results['params']:,}"),
    ]
    for what, batch in (("train", f"{cfg.pretrain_batch} base sequences"), ("score", f"{SCORE_BATCH} demonstrations")):
        rows += [
            (f"{what} tokens/s, packed token_logprobs ({batch})", f"{results[f'{what}_tokens_per_s_packed']:,.0f}"),
            (f"{what} tokens/s, our GPT on the padded batch", f"{results[f'{what}_tokens_per_s_padded']:,.0f}"),
            (f"{what} tokens/s, plain nanoGPT-style, padded", f"{results[f'{what}_tokens_per_s_plain']:,.0f}"),
            ("  packed / plain", f"{results[f'{what}_packed_vs_plain']:.2f}x"),
            ("  padded / plain", f"{results[f'{what}_padded_vs_plain']:.2f}x"),
        ]
    rows += [
        (f"sample tokens/s, KV cache ({SAMPLE_BATCH} prompts, {cfg.max_new_tokens} new)",
         f"{results['sample_tokens_per_s_cached']:,.0f}"),
        ("sample tokens/s, no cache (full context each step)", f"{results['sample_tokens_per_s_uncached']:,.0f}"),
        ("KV cache speed-up (cached / uncached tokens/s)", f"{results['cache_speedup']:.1f}x"),
        ("tokens sampled per call", f"{results['sample_tokens']:,}"),
        (memory + ", MiB", "n/a on Windows" if results["peak_memory_mib"] is None else f"{results['peak_memory_mib']:,.0f}"),
    ]
    if args.processes:
        for name, sec in results["processes"].items():
            rows.append((f"--seeds=2 --preset={args.processes}, {name}, wall s", f"{sec:.1f}"))
        rows.append(("  one process / two processes", f"{results['processes_speedup']:.2f}x"))
    if args.pipeline:
        p = results["pipeline"]
        rows += [(f"default run, stage {stage}, s", f"{sec:.1f}") for stage, sec in p["stage_seconds"].items()]
        rows += [(f"{name}, wall s", f"{sec:.1f}") for name, sec in p["wall_seconds"].items()]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")


def processes(preset):
    """--processes: --seeds=2 of a preset, from scratch (no cache), in one process using every core, then as two
    torchrun processes with half the cores each. For tiny models one run per process wins: a second thread of
    one process mostly waits on the first."""
    import os
    import subprocess
    import sys
    import tempfile
    common = [f"--preset={preset}", "--seeds=2", "--cache=off", "--progress=false"]
    here = os.path.dirname(os.path.abspath(__file__))
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher in [(f"1 process x {os.cpu_count()} threads", [sys.executable]),
                               (f"2 processes x {max(1, (os.cpu_count() or 1) // 2)} threads",
                                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])]:
            t0 = time.perf_counter()
            subprocess.run([*launcher, os.path.join(here, "afd_mini.py"), *common,
                            f"--out_dir={os.path.join(tmp, str(len(walls)))}"], check=True, capture_output=True)
            walls[name] = time.perf_counter() - t0
    return walls


def pipeline(device):
    """--pipeline: where the default run's time goes, and what the stage cache saves. One seed of the default
    configuration from scratch in a temporary directory (its cache empty, so every stage is computed): the
    per-stage profile. Then the classroom experiment `--kl_coef=0.5` in another directory with that cache, which
    reuses every stage that does not read kl_coef."""
    import contextlib
    import io
    import os
    import tempfile

    import afd_mini
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"--cache={os.path.join(tmp, 'cache')}", "--progress=false", f"--device={device.type}"]
        walls = {}
        for name, extra in [("default run", []), ("--kl_coef=0.5 after it", ["--kl_coef=0.5"])]:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                status = afd_mini.main([f"--out_dir={os.path.join(tmp, str(len(walls)))}", *common, *extra])
            assert status == 0, f"{name}: afd_mini exited with {status}"
            walls[name] = time.perf_counter() - t0
        with open(os.path.join(tmp, "0", "seed_0", "metrics.json"), encoding="utf-8") as f:
            stages = json.load(f)["stage_seconds"]
    return {"stage_seconds": stages, "wall_seconds": walls}


def eval_noise(seed_dir, repeats, policies, as_json):
    """--eval_noise: stage_evaluate on one finished seed's checkpoints, `repeats` times, each with other evaluation
    samples (the policies' own, the expert's and the floor's: the run's seed shifted by 1000·k for the draws alone);
    the standard deviation over repeats of each metric, exact (evaluation.py) and sampled. The prompts, checkpoints
    and support are the same every time, so the spread is the evaluation's own noise."""
    import numpy as np

    import afd_mini
    run, seed = load_run(seed_dir)
    afd_mini.POLICIES = [afd_mini.POLICY[p] for p in policies]
    results = []
    for k in range(repeats):
        run.seed = seed + 1000 * k   # the evaluation's draws only: run.dir still names the seed's folder
        run.begin("evaluate")
        results.append(afd_mini.stage_evaluate(run)["policies"])
    keys = ["off_support", "reverse_kl", "reverse_kl_on", "reverse_kl_support", "forward_kl", "mode_entropy",
            "gold_reward"]
    table = {p: {k: {"exact_mean": float(np.mean([r[p][k] for r in results])),
                     "exact_sd": float(np.std([r[p][k] for r in results], ddof=1)),
                     **({"sampled_sd": float(np.std([r[p]["sampled"][k] for r in results], ddof=1)),
                         "sampled_mean": float(np.mean([r[p]["sampled"][k] for r in results]))}
                        if k in results[0][p]["sampled"] else {}),
                     "reported_se": float(np.mean([r[p]["se"][k] for r in results]))}
                 for k in keys} for p in policies}
    if as_json:
        print(json.dumps({"seed_dir": seed_dir, "repeats": repeats, "metrics": table}, indent=1))
        return
    print(f"{seed_dir}: {repeats} evaluations with other samples; sd over them (exact | sampled), mean reported SE")
    for p in policies:
        for k, v in table[p].items():
            sampled = f"{v['sampled_sd']:8.3f}" if "sampled_sd" in v else "       -"
            print(f"{p:12s} {k:20s} mean {v['exact_mean']:8.3f}   sd {v['exact_sd']:7.3f} | {sampled}   "
                  f"SE {v['reported_se']:.3f}")


def load_run(seed_dir):
    """The Run of one finished seed's folder (its config.json), and the seed."""
    import os

    import afd_mini
    with open(os.path.join(seed_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    seed = int(os.path.basename(os.path.normpath(seed_dir)).removeprefix("seed_"))
    cfg = afd_mini.Config(**{**config, "out_dir": os.path.dirname(os.path.normpath(seed_dir)), "progress": False})
    return afd_mini.Run(cfg, seed), seed


def discriminators(seed_dir, as_json):
    """--discriminators: q_φ of each AIRL-form discriminator (a language model trained by the discriminator's BCE,
    from a copy of π_SFT) evaluated exactly like a policy on the support (evaluation.py): P(off-support), the
    forward KL's support share and the KL on the support, beside π_SFT's. The BCE can raise the margin by lowering
    the likelihood of both classes, moving q_φ's mass off the support (likelihood displacement)."""
    import os

    import numpy as np

    import afd_mini
    import evaluation
    run, _ = load_run(seed_dir)
    support = evaluation.support_of(run.world, run.data["eval_prompts"], run.device)
    rows = {}
    names = ["sft"] + [m for m in afd_mini.ADVERSARIAL if os.path.exists(os.path.join(seed_dir, m + "_disc.pt"))]
    for name in names:
        model, extra = run.load("sft" if name == "sft" else name + "_disc")
        if name != "sft" and extra.get("form") != "airl":
            continue
        log_q = evaluation.tree_logprobs(model, support.batches).numpy()
        none = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))   # no samples: the sampled parts are left out
        m = evaluation.exact_metrics(support, log_q, none, None, run.cfg.eps, run.world.mode_names)
        rows["π_SFT" if name == "sft" else f"q_φ of {name}"] = {
            "off_support": m["off_support"], "forward_kl_support": m["forward_kl"], "kl_on_support": m["reverse_kl_on"]}
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{seed_dir}: exact, on the evaluation prompts' support (the forward KL without the floor's share)")
    for name, r in rows.items():
        print(f"{name:18s} off-support {r['off_support']:.4f}  forward KL {r['forward_kl_support']:7.3f}  "
              f"KL on the support {r['kl_on_support']:.3f}")


if __name__ == "__main__":
    main()
