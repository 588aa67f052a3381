"""
evaluation.py: a policy's distance from the expert, computed by enumeration wherever the world allows it.

The expert writes a finite set of responses to each prompt (World.support: about 80 per prompt). With S_x that
set, β the expert's smoothed likelihood (data/world.py: β = (1 − ε) P_expert + ε P_floor) and the held-out
prompts x, every number below is exact except the factors marked "sampled":
    P_π(on | x)          = Σ_{y∈S_x} π(y|x)                         P_π(off-support) = 1 − mean_x P_π(on | x)
    reverse KL on S      = mean_x Σ_{y∈S_x} π(y|x) [log π(y|x) − log β(y|x)]      (a part of the sum below, not a KL:
                                                                              it can be < 0, and falls as π leaves S)
    KL on the support    = Σ_x P_π(on|x) KL(π(·|x, on) ‖ β(·|x, on)) / Σ_x P_π(on|x)  (a KL: ≥ 0, 0 iff π = β on S;
                           π(·|x, on) = π/P_π(on|x) on S_x, β(·|x, on) likewise: how π spreads over what β writes)
    reverse KL KL(π ‖ β) = reverse KL on S + P_π(off) · E_π[log π − log β | off]            (sampled: π's samples)
    forward KL KL(β ‖ π) = mean_x Σ_{y∈S_x} β(y|x) [log β − log π]                         (the support's share)
                         + ε · E_{y~P_floor}[1{y∉S_x} (log β − log π)]                    (sampled: the floor's)
    P_π(mode m)          = mean_x Σ_{y∈S_x, mode m} π(y|x);    mode entropy: of P_π(mode | on-support)
    gold reward          = mean_x Σ_{y∈S_x} π(y|x) r*(y) + P_π(off) · E_π[r* | off]         (sampled: π's samples)
Each sampled factor comes with its Monte Carlo standard error (the `se` of a policy in metrics.json).

Why: off the support β is the floor, log β ≈ −7 − 5.7 nats a token, so one off-support sample costs ~100 nats
against ~3 on the support. A reverse KL estimated from 512 samples is then mostly (number of off-support samples)
× 100 / 512, and one more such sample moves it by 0.2 nats. Here the count is replaced by its exact expectation.

Scoring 80 responses per prompt one by one repeats their shared prefixes (the signature, the template, the worked
steps, the answer's first characters). Instead each prompt's support is one prefix tree, scored in one packed row
in which every token attends only to its ancestors (tree attention, the way speculative decoding scores a tree of
candidate continuations): every prefix is computed once, about a fifth of the tokens.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import objectives as obj


# -----------------------------------------------------------------------------------------------------------
# The support of every evaluation prompt as prefix trees, and scoring them in one pass

@dataclass
class PrefixTree:
    """The prompt and every response of one prompt's support, as one row of tokens in depth-first order: a token's
    subtree is tokens[i:end[i]], so token i may attend to token j exactly when j <= i < end[j]."""
    tokens: list   # the prompt's tokens, then one per tree node
    parent: list   # each token's predecessor in its sequence (the first token's is itself: it predicts nothing)
    depth: list    # each token's position in its own sequence
    end: list      # one past the last index of each token's subtree
    paths: list    # per response: the indices of its response tokens


def prefix_tree(prompt_tokens, responses):
    """The PrefixTree of responses (token lists) to one prompt (a token list)."""
    children, node_token, paths = [{}], [prompt_tokens[-1]], []   # node 0: the prompt's last token
    for y in responses:
        node, path = 0, []
        for t in y:
            if t not in children[node]:
                children[node][t] = len(children)
                children.append({})
                node_token.append(t)
            node = children[node][t]
            path.append(node)
        paths.append(path)
    P = len(prompt_tokens)
    tokens, parent, depth = list(prompt_tokens), [max(i - 1, 0) for i in range(P)], list(range(P))
    index, end = {0: P - 1}, [0] * P

    def visit(node):   # depth-first, children in insertion order; at most max_response_tokens deep
        for child in children[node].values():
            index[child] = len(tokens)
            tokens.append(node_token[child])
            parent.append(index[node])
            depth.append(depth[index[node]] + 1)
            end.append(0)
            visit(child)
        end[index[node]] = len(tokens)
    visit(0)
    end[:P] = [len(tokens)] * P   # the prompt's tokens are everyone's ancestors
    return PrefixTree(tokens, parent, depth, end, [[index[n] for n in path] for path in paths])


@dataclass
class TreeBatch:
    """Several prefix trees padded into one batch, with what scoring needs, on a device."""
    idx: torch.Tensor      # (B, W) tokens
    pos: torch.Tensor      # (B, W) positions
    mask: torch.Tensor     # (B, 1, W, W) token i sees token j
    parent: torch.Tensor   # (B, W) flat index (b·W + parent) of the logits that predict each token
    paths: torch.Tensor    # (R, L) flat indices of each response's tokens; B·W (a zero) pads
    responses: torch.Tensor  # (R,) which response of all the trees' each path is


def tree_batches(trees, device, budget=8192):
    """TreeBatches of about `budget` tokens each. Trees of similar size go together (sorted by size), so that
    little is padding; `responses` says where each one's responses belong."""
    first = np.cumsum([0] + [len(t.paths) for t in trees])   # each tree's first response
    order = sorted(range(len(trees)), key=lambda i: len(trees[i].tokens))
    batches, start = [], 0
    while start < len(order):
        stop, width = start, 0
        while stop < len(order) and (stop == start or len(trees[order[stop]].tokens) * (stop - start + 1)
                                     <= budget):
            width = len(trees[order[stop]].tokens)   # the largest so far: sorted
            stop += 1
        chunk = [trees[i] for i in order[start:stop]]
        responses = torch.tensor([r for i in order[start:stop] for r in range(first[i], first[i + 1])])
        B, W = len(chunk), width
        idx, pos = torch.zeros(B, W, dtype=torch.long), torch.zeros(B, W, dtype=torch.long)
        parent = torch.arange(B * W).view(B, W)
        end = torch.arange(1, W + 1).repeat(B, 1)   # a pad sees itself only (no all-masked softmax rows)
        L = max(len(p) for t in chunk for p in t.paths)
        paths = torch.full((sum(len(t.paths) for t in chunk), L), B * W, dtype=torch.long)
        r = 0
        for b, t in enumerate(chunk):
            n = len(t.tokens)
            idx[b, :n], pos[b, :n], end[b, :n] = torch.tensor(t.tokens), torch.tensor(t.depth), torch.tensor(t.end)
            parent[b, :n] = b * W + torch.tensor(t.parent)
            for p in t.paths:
                paths[r, :len(p)] = b * W + torch.tensor(p)
                r += 1
        j = torch.arange(W)
        mask = (j[None, None, :] <= j[None, :, None]) & (j[None, :, None] < end[:, None, :])
        batches.append(TreeBatch(idx.to(device), pos.to(device), mask[:, None].to(device), parent.to(device),
                                 paths.to(device), responses))
        start = stop
    return batches


@torch.no_grad()
def tree_logprobs(model, batches):
    """log π(y|x) of every response of every tree, in the trees' order: (R,) float32 on the CPU. model: anything
    token_logprobs scores (a GPT; an Extrapolated, whose logits are log-probs)."""
    out = torch.zeros(sum(len(tb.responses) for tb in batches))
    for tb in batches:
        logits = model(tb.idx, pos=tb.pos, mask=tb.mask)[0]
        logp = F.log_softmax(logits.float(), dim=-1).flatten(0, 1)                # (B·W, V)
        node = logp[tb.parent.flatten(), tb.idx.flatten()]                        # log π(token | its ancestors)
        out[tb.responses] = torch.cat([node, node.new_zeros(1)])[tb.paths].sum(-1).float().cpu()
    return out


@dataclass
class Support:
    """The expert's support of every evaluation prompt, flattened: response r answers prompt prompt_of[r]."""
    prompt_of: np.ndarray   # (R,)
    log_beta: np.ndarray    # (R,) log β(y|x), the smoothed likelihood
    mode: np.ndarray        # (R,) the expert mode of each response
    gold: np.ndarray        # (R,) r*(x, y)
    trees: list             # one PrefixTree per prompt: the same responses
    batches: list           # the trees in TreeBatches, for tree_logprobs
    n_prompts: int


def support_of(world, prompts, device):
    """The Support of prompts (data.Prompt): World.support's responses, tokenised as the world does."""
    trees, prompt_of, log_beta, mode, gold = [], [], [], [], []
    for i, p in enumerate(prompts):
        texts = world.support(p)
        responses = [world.encode_response(text) for text, _, _ in texts]
        trees.append(prefix_tree(p.tokens, responses))
        judged = world.judge_many([p] * len(responses), responses)
        prompt_of += [i] * len(responses)
        log_beta += [j.logprob for j in judged]
        mode += [j.mode for j in judged]
        gold += [j.gold for j in judged]
    return Support(np.array(prompt_of), np.array(log_beta), np.array(mode), np.array(gold), trees,
                   tree_batches(trees, device), len(prompts))


def support_metrics(support, log_pi, mode_names):
    """The numbers of exact_metrics that need no sample, for a probe during training (stage_spin, dpo_training):
    P(off-support), the support's share of the forward KL, Σ_S β (log β − log π), the on-support part of the gold
    reward, Σ_S π r*, and the mode entropy. The forward KL's floor share (about +0.4 nats, sampled) is left out."""
    no_samples = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
    m = exact_metrics(support, log_pi, no_samples, None, 0.0, mode_names)
    return {"off_support": m["off_support"], "forward_kl_support": m["forward_kl"],
            "gold_on_support": m["gold_reward"], "mode_entropy": m["mode_entropy"]}


def floor_samples(world, prompts, n, rng):
    """n responses (token lists) of the floor sampler P_floor (each token uniform over the vocabulary, <|eor|>
    included; stop at <|eor|> or after max_response_tokens), each to a prompt drawn uniformly from prompts:
    (prompts, responses)."""
    T = world.cfg.max_response_tokens
    draws = rng.integers(world.vocab_size, size=(n, T))
    responses = []
    for row in draws.tolist():
        stop = row.index(world.eos_id) + 1 if world.eos_id in row else T
        responses.append(row[:stop])
    return [prompts[i] for i in rng.integers(len(prompts), size=n)], responses


# -----------------------------------------------------------------------------------------------------------
# The exact metrics

def _mean_se(x):
    """Mean and standard error of a sample (SE 0 for fewer than two values)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def exact_metrics(support, log_pi, own, floor, eps, mode_names):
    """The module docstring's numbers for one policy.
    support: the Support; log_pi (R,): log π of its responses (tree_logprobs);
    own: (log π − log β, r*, off) of the policy's own samples, numpy arrays (off: bool);
    floor: (log β − log π, off) of floor samples (None: the policy is the expert itself, whose forward KL is 0).
    Returns the policy's entry of metrics.json (its sampled factors' standard errors under `se`)."""
    log_pi = np.asarray(log_pi, dtype=float)
    pi, beta = np.exp(log_pi), np.exp(support.log_beta)
    per_prompt = lambda v: np.bincount(support.prompt_of, weights=v, minlength=support.n_prompts)
    p_on = per_prompt(pi)
    p_off = float(max(0.0, 1.0 - p_on.mean()))
    # KL(π(·|on) ‖ β(·|on)) of each prompt = Σ_S (π/P_on) [log π − log P_on − log β + log β(S)]
    beta_on = per_prompt(beta)
    cond = per_prompt(pi * (log_pi - support.log_beta)) / np.maximum(p_on, 1e-300) - np.log(np.maximum(p_on, 1e-300)) \
        + np.log(beta_on)
    kl_on = float((p_on * cond).sum() / p_on.sum()) if p_on.sum() > 0 else 0.0
    rkl_support = float(per_prompt(pi * (log_pi - support.log_beta)).mean())
    fkl_support = float(per_prompt(beta * (support.log_beta - log_pi)).mean())
    gold_support = float(per_prompt(pi * support.gold).mean())
    freq = {m: float(per_prompt(pi * (support.mode == m)).mean()) for m in mode_names}
    on = np.array([freq[m] for m in mode_names])
    on = on[on > 0] / on.sum()
    # the off-support factors, from the policy's own samples that fell off the support
    cost, gold, off = own
    cost_off, cost_se = _mean_se(cost[off])
    gold_off, gold_se = _mean_se(gold[off])
    if floor is None:
        fkl_floor, fkl_se = 0.0, 0.0
    else:
        gap, floor_off = floor
        fkl_floor, fkl_se = _mean_se(np.where(floor_off, gap, 0.0))
        fkl_floor, fkl_se = eps * fkl_floor, eps * fkl_se
    return {
        "off_support": p_off,
        "reverse_kl": rkl_support + p_off * cost_off,
        "reverse_kl_support": rkl_support,            # Σ over the support of π (log π − log β)
        "reverse_kl_off": p_off * cost_off,           # P(off) × the mean cost of an off-support sample
        "reverse_kl_on": kl_on,                       # KL(π(·|on) ‖ β(·|on)): mode-seeking within the support
        "off_support_cost": cost_off,                 # E_π[log π − log β | off]
        "forward_kl": fkl_support + fkl_floor,
        "forward_kl_floor": fkl_floor,                # the ε-share: floor responses off the support
        "mode_freq": freq,
        "mode_entropy": float(-(on * np.log(on)).sum()) + 0.0 if len(on) else 0.0,
        "gold_reward": gold_support + p_off * gold_off,
        "off_support_samples": int(off.sum()),
        "se": {"reverse_kl": p_off * cost_se, "forward_kl": fkl_se, "gold_reward": p_off * gold_se,
               "reverse_kl_support": 0.0, "reverse_kl_on": 0.0, "off_support": 0.0, "mode_entropy": 0.0},
    }


# -----------------------------------------------------------------------------------------------------------
# What sampling alone would say: the Monte Carlo numbers kept beside the exact ones (metrics.json's `sampled`)

def policy_kls(on_expert, own):
    """(KL(β ‖ π), KL(π ‖ β)), Monte Carlo, from two samples with log_pi and log_beta (afd_mini.Scored):
        forward  KL(β ‖ π) = mean over the expert's samples y ~ β (on_expert) of log β(y|x) − log π(y|x),
        reverse  KL(π ‖ β) = mean over the policy's own samples y ~ π (own) of log π(y|x) − log β(y|x).
    The sampled estimates, kept beside the exact ones (evaluation.py) to show what sampling alone would say."""
    return (obj.forward_kl_mc(on_expert.log_beta, on_expert.log_pi).mean().item(),
            obj.reverse_kl_mc(own.log_pi, own.log_beta).mean().item())


def describe(world, prompts, responses):
    """Of a sample: mode frequencies, off-support rate, mode entropy, diversity, gold reward and length."""
    modes = world.modes(prompts, responses)
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
        "gold_reward": float(np.mean(world.gold_rewards(prompts, responses))),
        "length": float(np.mean([len(r) for r in responses])),
    }


# -----------------------------------------------------------------------------------------------------------
# Best-of-N's curve: what the pick of N samples scores, at every N

def best_of_n_curve(reward, gold, picks, N, logp=None, tau=math.inf):
    """Best-of-n for n = 1, 2, 4, ..., N from N samples of each prompt, prompt-major (sample j of prompt i at
    i·N + j): the candidate `reward` ranks highest among n (among the plausible ones, objectives.best_of_n_plausible,
    when tau is finite: logp = their log π_SFT), the mean gold reward of the picks, and the mean over the picks of
    each of `picks` (per-sample values: off-support 0/1, length, ...). N samples per prompt = N/n disjoint draws of
    Best-of-n: an average over all of them. kl: KL(Best-of-n ‖ π_SFT) in closed form (objectives.best_of_n_kl), unconstrained only (the
    constrained choice is not the argmax of a reward of y alone; its KL is at most log n)."""
    res = {"n": [], "gold_reward": [], **({"kl": []} if tau == math.inf else {}), **{k: [] for k in picks}}
    n = 1
    while n <= N:
        r = reward.view(-1, n)
        pick = obj.best_of_n(r) if tau == math.inf else obj.best_of_n_plausible(r, logp.view(-1, n), tau)
        res["n"].append(n)
        if "kl" in res:
            res["kl"].append(obj.best_of_n_kl(n))
        for key, values in [("gold_reward", gold), *picks.items()]:
            res[key].append(values.view(-1, n)[torch.arange(len(reward) // n), pick].float().mean().item())
        n *= 2
    return res
