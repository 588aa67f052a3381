"""
Benchmark of model.py and sampling.py on the default model, GPTConfig(). A benchmark, not a test: the numbers
depend on the machine and on whatever else it is running.

- training tokens/s of our GPT (forward + backward + AdamW step), next to a plain nanoGPT-style
  model of the same size defined below, so that the cache and padding plumbing in model.py is
  seen to cost training nothing;
- sampling tokens/s with the KV cache, and without it (the whole context recomputed every step,
  as nanoGPT's generate does), and their ratio, the KV cache speed-up;
- peak memory: of the accelerator on CUDA, of the whole process (RSS, torch included) on CPU.

Each measurement alternates the two contenders and keeps the best round, which is the least
disturbed by other work on the machine.

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
import json
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, GPTConfig, autocast, get_device
from sampling import sample

TRAIN_BATCH = 32  # sequences of block_size tokens per training step
SAMPLE_BATCH = 256  # prompts per sampling call (the pipeline samples up to 512 at once)
PROMPT_LENS = (10, 20)  # prompt lengths drawn from this range, as in the pipeline
MAX_NEW_TOKENS = 64
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

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


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


def train_step_fn(model, optimizer, x, y, device, steps=2):
    def run():
        for _ in range(steps):
            with autocast(device):
                _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return run


def main():
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
    device = get_device(args.device)
    torch.manual_seed(0)
    config = GPTConfig()

    # Training: ours with its own optimizer set-up, the plain model with nanoGPT's (fused AdamW
    # on CUDA, PyTorch's default elsewhere).
    ours = GPT(config).to(device)
    plain = PlainGPT(config).to(device)
    x = torch.randint(0, config.vocab_size, (TRAIN_BATCH, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (TRAIN_BATCH, config.block_size), device=device)
    steps = 2
    train = best_rounds({
        "ours": train_step_fn(ours, ours.configure_optimizer(0.1, 1e-4, device_type=device.type), x, y, device, steps),
        "plain": train_step_fn(plain, torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                                        **({"fused": True} if device.type == "cuda" else {})),
                               x, y, device, steps),
    }, device, args.rounds)
    train_tokens = steps * TRAIN_BATCH * config.block_size

    # Sampling: a fresh model, same prompts and seed for both, so both produce the same tokens.
    model = GPT(config).to(device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, config.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(PROMPT_LENS[0], PROMPT_LENS[1] + 1, (SAMPLE_BATCH,), generator=g)]
    produced = {}

    def sampler(use_cache):
        def run():
            gen = torch.Generator(device=device).manual_seed(0)
            roll = sample(model, prompts, MAX_NEW_TOKENS, eos_id=0, generator=gen, use_cache=use_cache)
            produced[use_cache] = int(roll.response_mask.sum())
        return run
    sampling = best_rounds({"cached": sampler(True), "uncached": sampler(False)}, device, args.rounds)

    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)

    results = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "params": ours.num_params(),
        "train_tokens_per_s": train_tokens / train["ours"],
        "train_tokens_per_s_plain": train_tokens / train["plain"],
        "sample_tokens_per_s_cached": produced[True] / sampling["cached"],
        "sample_tokens_per_s_uncached": produced[False] / sampling["uncached"],
        "sample_tokens": produced[True],
        "peak_memory_mib": peak_mib,
    }
    results["train_vs_plain"] = results["train_tokens_per_s"] / results["train_tokens_per_s_plain"]
    results["cache_speedup"] = results["sample_tokens_per_s_cached"] / results["sample_tokens_per_s_uncached"]
    if args.pipeline:
        results["pipeline"] = pipeline(device)
    if args.processes:
        results["processes"] = walls = processes(args.processes)
        results["processes_speedup"] = list(walls.values())[0] / list(walls.values())[1]
    if args.json:
        print(json.dumps(results))
        return
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak process RSS (torch included)"
    rows = [
        ("device", results["device"]),
        ("torch threads", results["threads"]),
        ("parameters", f"{results['params']:,}"),
        (f"train tokens/s, ours (batch {TRAIN_BATCH} x {config.block_size})", f"{results['train_tokens_per_s']:,.0f}"),
        ("train tokens/s, plain nanoGPT-style", f"{results['train_tokens_per_s_plain']:,.0f}"),
        ("  ours / plain", f"{results['train_vs_plain']:.2f}x"),
        (f"sample tokens/s, KV cache ({SAMPLE_BATCH} prompts, {MAX_NEW_TOKENS} new)",
         f"{results['sample_tokens_per_s_cached']:,.0f}"),
        ("sample tokens/s, no cache (full context each step)", f"{results['sample_tokens_per_s_uncached']:,.0f}"),
        ("KV cache speed-up (cached / uncached tokens/s)", f"{results['cache_speedup']:.1f}x"),
        ("tokens sampled per call", f"{results['sample_tokens']:,}"),
        (memory + ", MiB", f"{results['peak_memory_mib']:,.0f}"),
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
        with open(os.path.join(tmp, "0", "seed_0", "metrics.json")) as f:
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
    with open(os.path.join(seed_dir, "config.json")) as f:
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
