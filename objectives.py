"""
objectives.py: every loss, estimator and reward of afd-mini, as pure functions (tensors in, tensors out).

Alignment from Demonstrations (AfD) aligns a policy π(y|x) to demonstrations y ~ β(y|x) by making the two
distributions over responses match. Which divergence is minimised decides the algorithm, and the pipeline
(afd_mini.py) walks through them in order:

    pretrain
    → SFT = forward KL, KL(β ‖ π)                              sft_loss
    → reverse KL, KL(π ‖ β), by the oracle (log β known)       reverse_kl_mc as the reward (reverse_kl_reinforce_loss:
                                                               the same estimator as one loss, tested and taught,
                                                               not called by the pipeline)
      or by a discriminator's reward                           discriminator_loss, log_ratio_logit,
                                                               airl/gail/fairl_reward
      and the forward KL's own reward e^h (stages fkl_iw,      importance_weight_reward, effective_sample_size
      fkl_iw_oracle), and how many samples carry it (logged)
      optimised by policy gradient                             ppo_clip_loss, kl_k1, kl_shaped_advantages (with
                                                               leave_one_out_advantages, rewards_to_go); taught,
                                                               not called by the pipeline: policy_gradient_loss
                                                               (PPO's first step), kl_k3
    → reward extrapolation: Init-SFT classifier + Best-of-N    classifier_reward_loss, best_of_n, best_of_n_kl;
      and its KL bound; the preference reward model            bradley_terry_loss; classifier_optimum (tested, not
                                                               called: the pipeline computes the optima with
                                                               log_ratio_family, γ = 1)
      and Best-of-N under a plausibility floor, a family of    plausible, best_of_n_plausible,
      log-ratio rewards, the extrapolated policy               log_ratio_family, extrapolated_logits (sampling.py)
      π_SFT^{1+α} π_init^{−α}
    → preference pairs without a reward model (DPO), and       dpo_loss
      demonstrations against own samples (SPIN), and where an   spin_iterate_optimum (not called by the pipeline)
      iteration of SPIN ends
    → evaluate: KL both ways against the known expert, exact   (evaluation.py; sampled: forward_kl_mc, reverse_kl_mc)
      by enumeration of its support
    A divergence between two next-token distributions          generalized_jsd (called only to draw the report's
                                                               fig_intuition.png, figures.py)

Models, sampling and optimisers live elsewhere; here is only the maths, each equation next to its code.

Notation: x prompt, y = (y_1, ..., y_T) response, s_t = (x, y_<t) state, π policy, β = π_β expert
(demonstrator), π_ref reference, λ the weight of a KL penalty (kl_coef), D discriminator,
h = logit D = log D − log(1 − D), σ the sigmoid.
KL(p ‖ q) = E_p[log p − log q]. Read the direction every time:
    KL(β ‖ π), "forward":  mass-covering, infinite where β has mass and π has none, so π spreads out;
    KL(π ‖ β), "reverse":  mode-seeking, infinite where π has mass and β has none, so π contracts onto modes.
The classic bug: F.kl_div(input, target) computes KL(target ‖ input), input given as log-probabilities.

Shapes: per-token log-probs logp (B, T) and a bool mask (B, T), True on response tokens (prompt and padding
False); log π(y|x) = Σ_t logp[:, t] over the mask. Rewards and advantages are constants in every loss: they
are detached inside.
"""

import math

import torch
import torch.nn.functional as F


def _response(x, mask):
    # masked_fill, not x * mask: an off-mask NaN or inf must not reach the value nor the gradient
    return x.masked_fill(~mask, 0.0)


def sequence_logprob(logp, mask):
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over response tokens. (B, T), (B, T) → (B,)."""
    return _response(logp, mask).sum(-1)


# -----------------------------------------------------------------------------
# Forward KL = SFT

def sft_loss(logp, mask, normalize="tokens"):
    """Forward KL = SFT: minimise KL(β ‖ π), forward, mass-covering, on demonstrations (x, y) ~ β.

    Derived in exercise 1 (not in the student copy):
    In the token MDP a trajectory has density d^π(y|x) = Π_t P(s_{t+1} | s_t, y_t) π(y_t | s_t). The transition
    P (append the token) is the same for β and π, so it cancels in the ratio d^β / d^π:
        KL(β ‖ π) = E_β[log d^β(y|x) − log d^π(y|x)] = −E_β[Σ_t log π(y_t | x, y_<t)] − H(β),
    and H(β) does not depend on π: the trajectory forward KL is the token NLL summed over the response
    (equivalently Σ_t E_{s_t ~ β} KL(β(·|s_t) ‖ π(·|s_t)), the token-level forward KL, by the chain rule).

    normalize="sequences": Σ_{b,t} NLL / B, the Monte Carlo estimate of KL(β ‖ π) + H(β) itself.
    normalize="tokens":    Σ_{b,t} NLL / (number of response tokens in the batch), nanoGPT's token mean. Over
        a whole data set this is the same objective divided by the mean response length: same minimiser,
        smaller step. Per batch the divisor moves with the batch's lengths, so the step size is noisier.
    Not offered: averaging within each response first (mean over t, then over b). That weights response b by
    1/|y_b|, which changes the objective and its minimiser: tokens of short responses count more, so the
    policy learns to end early.
    """
    # ---- exercise 1 (sft_loss): begin solution
    nll = -_response(logp, mask).sum()
    if normalize == "tokens":
        return nll / mask.sum()
    if normalize == "sequences":
        return nll / logp.shape[0]
    raise ValueError(f"normalize must be 'tokens' or 'sequences', not {normalize!r}")
    # ---- exercise 1: end solution


# -----------------------------------------------------------------------------
# Monte Carlo KL against a known expert (afd-mini's world has an exact log β)

def forward_kl_mc(expert_logp_seq, policy_logp_seq):
    """One sample of KL(β ‖ π), forward, mass-covering, per sequence, on EXPERT samples y ~ β(·|x):
        KL(β ‖ π) = E_{y~β}[log β(y|x) − log π(y|x)],   estimate: the mean of the returned (B,).
    Single terms can be negative; the mean is unbiased. Its gradient, E_β[−∇log π], is SFT's.
    """
    # ---- exercise 2 (kl_estimators): begin solution
    return expert_logp_seq - policy_logp_seq
    # ---- exercise 2: end solution


def reverse_kl_mc(policy_logp_seq, expert_logp_seq):
    """One sample of KL(π ‖ β), reverse, mode-seeking, per sequence, on POLICY samples y ~ π(·|x):
        KL(π ‖ β) = E_{y~π}[log π(y|x) − log β(y|x)],   estimate: the mean of the returned (B,).
    A number to log, not a loss: to minimise KL(π ‖ β) use reverse_kl_reinforce_loss.

    Derived in exercise 2 (not in the student copy):
    The samples themselves depend on π, and the gradient of this mean, E_π[∇log π] = 0, is zero in expectation.
    """
    # ---- exercise 2 (kl_estimators): begin solution
    return policy_logp_seq - expert_logp_seq
    # ---- exercise 2: end solution


# -----------------------------------------------------------------------------
# Policy optimisation

def leave_one_out_advantages(rewards, group_size):
    """A_i = r_i − mean_{j≠i} r_j, within groups of group_size consecutive samples of the same prompt (RLOO,
    Kool et al. 2019). rewards (B,) → (B,), detached.

    Derived in exercise 6 (not in the student copy):
    Sample i's baseline uses only the other samples, which are independent of y_i, so
    E[A_i ∇log π(y_i|x)] = E[r_i ∇log π(y_i|x)]: unbiased, with less variance.
    Equivalently A_i = G/(G−1)·(r_i − group mean).
    """
    assert group_size >= 2, "a leave-one-out baseline needs at least two samples per prompt"
    # ---- exercise 6 (reverse_kl_reinforce): begin solution
    r = rewards.detach().view(-1, group_size)
    mean_of_others = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - mean_of_others).view(-1)
    # ---- exercise 6: end solution


def rewards_to_go(token_rewards, mask):
    """R_t = Σ_{t' ≥ t} r_{t'} over response tokens (undiscounted); 0 off the response. (B, T) → (B, T).

    Derived in exercise 5 (not in the student copy):
    Token y_t cannot change the rewards already received before it, so only R_t multiplies ∇log π(y_t|s_t):
    the same expected gradient as the whole return Σ_t r_t, with less variance.
    """
    # ---- exercise 5 (rewards_to_go): begin solution
    r = _response(token_rewards.detach(), mask)
    return _response(r.flip(-1).cumsum(-1).flip(-1), mask)
    # ---- exercise 5: end solution


def policy_gradient_loss(logp, mask, advantages):
    """REINFORCE surrogate on samples y ~ π:  L = −(1/B) Σ_b Σ_t A_b(,t) log π(y_{b,t} | s_{b,t}).

    Score-function identity: ∇ E_{y~π}[R(y)] = E_π[R(y) ∇log π(y|x)], so with A = R − baseline held constant,
    −∇L is an unbiased estimate of ∇ E_π[R] (a baseline independent of y changes only the variance).
    advantages: (B,), one per response, multiplying every token; or (B, T), per token (rewards_to_go).
    Summed over tokens (a trajectory's log-prob), averaged over responses.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return -_response(advantages.detach() * logp, mask).sum() / logp.shape[0]


def ppo_clip_loss(logp, old_logp, advantages, mask, clip_eps=0.2):
    """PPO's clipped surrogate (Schulman et al. 2017), for several optimiser steps on one batch drawn from π_old:
        L = −(1/B) Σ_b Σ_t min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A),   ρ_t = π(y_t|s_t) / π_old(y_t|s_t).
    ρ reweights π_old's samples to π (importance sampling). The min removes any gain from pushing ρ past
    1 ± ε in the direction A favours (zero gradient there): a cheap trust region around π_old.
    Aggregated as policy_gradient_loss; on the first step (π = π_old, ρ = 1) the two have the same gradient.
    advantages (B,) or (B, T) as there; old_logp is detached.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    advantages = advantages.detach()
    ratio = torch.exp(_response(logp - old_logp.detach(), mask))
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    return -_response(surrogate, mask).sum() / logp.shape[0]


def reverse_kl_reinforce_loss(logp, mask, expert_logp_seq, group_size):
    """The oracle: minimise KL(π ‖ β), reverse, mode-seeking, when log β(y|x) is known (on-policy
    distillation). The upper bound that the discriminator methods below approximate.
    policy_gradient_loss with the reward r(y) = log β(y|x) − log π(y|x), held constant, has expected gradient
    ∇ KL(π ‖ β). Rows: group_size consecutive samples of each prompt, leave-one-out baseline.
    expert_logp_seq: log β(y|x) of the policy's samples, (B,).

    Derived in exercise 6 (not in the student copy):
        ∇ KL(π ‖ β) = ∇ Σ_y π(y) (log π(y) − log β(y))
                    = Σ_y ∇π(y) (log π(y) − log β(y)) + Σ_y π(y) ∇log π(y)   (last sum: ∇Σ_y π = 0)
                    = −E_{y~π}[r(y) ∇log π(y|x)],
    and r may be held constant: its own gradient gives the vanishing sum.
    """
    # ---- exercise 6 (reverse_kl_reinforce): begin solution
    reward = -reverse_kl_mc(sequence_logprob(logp, mask), expert_logp_seq)
    return policy_gradient_loss(logp, mask, leave_one_out_advantages(reward, group_size))
    # ---- exercise 6: end solution


def kl_k1(logp, ref_logp):
    """k1 = log π − log π_ref = −log ratio, ratio = π_ref/π; per token, on samples from π. Same shape.

    Unbiased: E_{a~π(·|s)}[k1] = KL(π(·|s) ‖ π_ref(·|s)), reverse KL to the reference; summed over the
    response, E_π[Σ_t k1] = KL(π ‖ π_ref) of trajectories.

    Derived in exercise 7 (not in the student copy):
    Single terms can be negative, and when π ≈ π_ref the terms are large relative to their mean (they cancel
    only on average): high variance.

    Answered in exercise 7 (not in the student copy):
    Where it enters: the REWARD, r ← r − λ Σ_t k1 (λ the KL coefficient, detached). By the identity in
    reverse_kl_reinforce_loss, the policy-gradient loss's expected gradient then gains exactly λ ∇KL(π ‖ π_ref).
    """
    # ---- exercise 7 (kl_k1_k3): begin solution
    return logp - ref_logp
    # ---- exercise 7: end solution


def kl_k3(logp, ref_logp):
    """k3 = (ratio − 1) − log ratio ≥ 0, ratio = π_ref/π; per token, on samples from π. Same shape.
    Unbiased for KL(π ‖ π_ref) like k1 (Schulman, "Approximating KL divergence", 2020).

    Answered in exercise 7 (not in the student copy):
    Where it enters: the LOSS, + λ · mean of k3, differentiated directly (GRPO). Know which gradient that
    gives: at each visited state s, that of the FORWARD KL to the reference, KL(π_ref(·|s) ‖ π(·|s)),
    mass-covering, at the states π visits (their distribution is not differentiated); not ∇KL(π ‖ π_ref).

    Derived in exercise 7 (not in the student copy):
    E_{a~π}[ratio − 1] = Σ_a π_ref(a|s) − 1 = 0, so k3 is k1 plus a zero-mean control variate: unbiased for
    KL(π ‖ π_ref) like k1, never negative (e^u ≥ 1 + u), and of lower variance near π_ref (k3 ≈ u²/2 for
    u = log ratio small). Its gradient:
        E_{a~π}[∇k3] = E_{a~π}[(1 − ratio) ∇log π(a|s)] = −Σ_a π_ref(a|s) ∇log π(a|s) = ∇KL(π_ref(·|s) ‖ π(·|s)).
    (k1 differentiated directly averages to zero.)
    """
    # ---- exercise 7 (kl_k1_k3): begin solution
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1 - log_ratio
    # ---- exercise 7: end solution


def kl_shaped_advantages(reward, k1, mask, kl_coef, group_size, whiten=True, flat_tol=1e-6):
    """The advantages of afd_mini's policy-gradient loop: the reward minus the k1 penalty to the reference,
    a leave-one-out baseline, whitened. reward: (B,) one per response, or (B, T) per token; k1: (B, T) per-token
    log π − log π_ref (kl_k1) on the policy's samples; rows in groups of group_size samples of one prompt.
    Returns (B,) or (B, T), like reward; detached.

    Sequence reward:  r̃_b = r_b − λ Σ_t k1_{b,t},               A_b = r̃_b − mean_{j≠b} r̃_j
    Token rewards:    r̃_{b,t} = (r_{b,t} − λ k1_{b,t}) m_{b,t},
                      A_{b,t} = (Σ_{t'≥t} r̃_{b,t'} − mean_{j≠b} Σ_{t'} r̃_{j,t'}) m_{b,t}
    (j over the other members of b's group; λ = kl_coef). Token level: the sample's reward-to-go minus the other
    samples' mean return, a baseline independent of y_b. Either way, with these advantages held constant,
        E[−∇ policy_gradient_loss] = ∇ (E_π[Σ_t r_t] − λ KL(π ‖ π_ref))      (tested by enumeration).
    whiten=True then divides A by std(A), the unbiased (N − 1) std over the batch, over response tokens for
    token rewards, floored at 1e-6: no centring (the baseline did that), one step size whatever the reward's
    scale; it rescales the gradient by a batch-dependent constant, so the identity above holds for whiten=False.
    Whitening would also blow rounding up to full size: a reward that is 0 on every sample (a discriminator that
    has not moved) leaves advantages of ~1e-7, float32's rounding, which a division by their own std turns into a
    spread of ~1 and Adam into a full step in a random direction. So first a group whose raw advantages are all
    within flat_tol × max(1, max |r̃|) of 0 (a millionth of the batch's reward scale, at least a millionth of a
    nat) gets advantage exactly 0: it carries no signal, and it makes no update.
    The sign: by kl_k1's identity, r − λ Σ_t k1 adds λ ∇KL(π ‖ π_ref) to the loss's expected gradient, a
    penalty; with + it would push π away from π_ref.
    """
    reward, k1 = reward.detach(), _response(k1.detach(), mask)
    if reward.dim() == 1:    # sequence reward: the penalty summed over the response
        shaped = reward - kl_coef * k1.sum(-1)
        adv = leave_one_out_advantages(shaped, group_size)
    else:                    # token rewards: penalty per token, reward-to-go, LOO baseline on the returns
        shaped = (reward - kl_coef * k1) * mask
        returns = shaped.sum(-1)
        mean_of_others = returns - leave_one_out_advantages(returns, group_size)
        adv = (rewards_to_go(shaped, mask) - mean_of_others[:, None]) * mask
    if not whiten:
        return adv
    tol = flat_tol * max(1.0, shaped.abs().max().item() if shaped.numel() else 0.0)
    flat = adv.abs().view(-1, group_size, *adv.shape[1:]).flatten(1).amax(1) <= tol      # (groups,)
    adv = adv.masked_fill(flat.repeat_interleave(group_size).view(-1, *[1] * (adv.dim() - 1)), 0.0)
    return adv / (adv[mask].std() if adv.dim() == 2 else adv.std()).clamp_min(1e-6)


# -----------------------------------------------------------------------------
# Discriminator-based imitation: reverse KL (and friends) without knowing β

def _mean(x, mask):
    # mask: bool, or weights (the enumeration tests pass probabilities); off-mask values are zeroed first, as in
    # _response, so that a NaN there cannot reach the mean
    return x.mean() if mask is None else (_response(x, mask != 0) * mask).sum() / mask.sum()


def discriminator_loss(logits_expert, logits_policy, mask_expert=None, mask_policy=None):
    """Binary cross-entropy of D = σ(h): demonstrations labelled 1, policy samples labelled 0.
        L(D) = −E_β[log D] − E_π[log(1 − D)] = E_β[softplus(−h)] + E_π[softplus(h)].
    For a fixed π the minimiser is D* = β/(β + π): h* = log β − log π, and L(D*) = log 4 − 2·JS(β, π).
    Each class is averaged on its own (equal class weights), so this holds whatever the two batch sizes.

    Sequence level: logits (B,), one per response; β and π are the trajectory distributions d(y|x).
    Token level: logits (B, T), one per (state, token), with the masks. Each expectation is then over the
    normalised occupancy ρ̄(s, a) = ρ(s, a) / E|y|, with ρ(s, a) = P(reach s) · π(a|s), so
        h*(s, a) = log ρ̄^β(s, a) − log ρ̄^π(s, a)
                 = log β(a|s) − log π(a|s) + log P_β(s)/P_π(s) + log E_π|y|/E_β|y|,
    not the token log-ratio alone. A float mask acts as weights (the tests pass exact probabilities).
    Log each class's accuracy, (h > 0) on demonstrations and (h < 0) on samples, to see who is winning.
    """
    # ---- exercise 9 (discriminator): begin solution
    return _mean(F.softplus(-logits_expert), mask_expert) + _mean(F.softplus(logits_policy), mask_policy)
    # ---- exercise 9: end solution


def log_ratio_logit(q_logp, ref_logp, mask):
    """The structured discriminator of AIRL (Fu et al. 2018): D = q_φ / (q_φ + π), so its logit is
        h(s_t, y_t) = log q_φ(y_t | s_t) − log π(y_t | s_t)          per token, (B, T), 0 off the mask;
        h(x, y)     = Σ_t h(s_t, y_t) = log q_φ(y|x) − log π(y|x)    per response: sum the tokens.
    q_φ is a language model (AIRL's f(s, a) = log q_φ(a|s)); π, the policy being trained, is a constant here
    (detached): the discriminator's loss trains q_φ only, the policy moves only through the reward.

    Why this form. Trained with discriminator_loss (demonstrations 1, policy samples 0), the sequence-level
    optimum D* = β/(β + π) is reached at q_φ = β, where h = log β − log π exactly: the oracle's reward, without
    knowing β. A scalar head must learn that ratio, tens of nats wide, from scratch; here the policy's own
    log π is in the logit already and q_φ, a language model like β, only has to move towards β. Initialised
    as a copy of π_SFT, h = 0 wherever π = π_SFT: D = ½, no bias at the start. (At token level the
    occupancy optimum also holds the state-visitation ratio log P_β(s)/P_π(s), which a normalised q_φ(·|s)
    cannot express: the token form is exact only where β and π reach states alike.)
    It is noise-contrastive estimation (Gutmann & Hyvärinen 2010) with the policy as the noise.

    The same function makes the log-ratio reward model of reward extrapolation: ref = the negative class's
    model (π_init for Init-SFT), q_φ initialised from it; its optimum log π_SFT − log π_init is
    classifier_optimum, the closed form. Trained with bradley_terry_loss on preference pairs instead, it is dpo_loss
    with λ = 1: DPO's implicit reward λ log π_θ/π_ref is this log-ratio, with q_φ = π_θ and π_ref = π_init.
    """
    return _response(q_logp - ref_logp.detach(), mask)


def airl_reward(logits):
    """AIRL, the paper's "IRL reward": r = log D − log(1 − D) = h. → reverse KL, KL(π ‖ β), mode-seeking.

    Sequence level: at D*, r = log β − log π, the oracle's reward; with r held fixed E_π[r ∇log π] is exactly
    −∇KL(π ‖ β) (see reverse_kl_reinforce_loss): the discriminator stands in for the unknown log β.
    Token level, summed as reward-to-go R_t: at D*, E_π[Σ_t R_t ∇log π(y_t|s_t)] = −∇[E_π|y| · KL(ρ̄^π ‖ ρ̄^β)],
    reverse KL between normalised occupancies; for responses of one fixed length T this is
    Σ_{t≤T} KL(π(y_≤t) ‖ β(y_≤t)), a sum over prefixes. Not the trajectory KL(π ‖ β), but also minimised at π = β.
    """
    # ---- exercise 9 (discriminator): begin solution
    return logits.detach()
    # ---- exercise 9: end solution


def gail_reward(logits):
    """GAIL: r = −log(1 − D) = softplus(h). → Jensen–Shannon, JS(β, π).

    The policy's side of min_π max_D E_β[log D] + E_π[log(1 − D)] = 2·JS(β, π) − log 4. At D*,
    r = log((β + π)/π), and with r held fixed E_π[r ∇log π] = −∇ 2·JS(β, π): the terms from D*'s own
    dependence on π sum to zero. r > 0 always: at token level every extra token earns reward (a length bonus).
    """
    # ---- exercise 9 (discriminator): begin solution
    return F.softplus(logits.detach())
    # ---- exercise 9: end solution


def fairl_reward(logits):
    """FAIRL (Ghasemipour et al. 2019, f-divergence view of imitation): r = −h·e^h. Its expectation is the forward
    KL, KL(β ‖ π); its policy gradient is not the forward KL's, and near β it points the other way.

    The value. At D*, e^h = u = β/π, so KL(β ‖ π) = E_β[log u] = E_π[u log u] = E_π[h e^h]; minimising it is
    maximising E_π[−h e^h]. The expectation is exact, the gradient is not: unlike AIRL and GAIL, with r held fixed
    (as every policy-gradient step holds it) the direction is
        Σ_y ∇π(y) r(y) = −Σ_y ∇π(y) u log u,
    whereas −∇KL(β ‖ π) = Σ_y ∇π(y) u (importance_weight_reward: the reward e^h). The part the fixed reward
    leaves out is its own dependence on π: ∇u = −u ∇log π, so Σ_y π ∇(u log u) = −Σ_y ∇π u (log u + 1), and
    the two parts of ∇E_π[u log u] add up to −Σ_y ∇π u = ∇KL(β ‖ π).

    The sign. Near π = β, u = 1 + ε with ε small: u log u = u − 1 + O(ε²), and Σ_y ∇π(y) = ∇Σ_y π = 0, so
        −Σ_y ∇π u log u = −Σ_y ∇π (u − 1) + O(ε²) = −Σ_y ∇π u + O(ε²) = +∇KL(β ‖ π) + O(ε²):
    against the forward KL's descent direction (cosine → −1 as π → β; tested by enumeration). Both directions
    vanish at π = β (u log u = 0 there), so β is a fixed point, but an unstable one: KL(β ‖ π) has its minimum
    there, and FAIRL's steps climb it. Away from β nothing brings π back: where π(y) ≪ β(y), u is large and
    r(y) = −u log u very negative, so the step lowers π(y) further, a runaway that empties outcomes β has
    (mode-dropping, the opposite of the forward KL's mass-covering). Tested: with the discriminator at D* after
    every step, KL(β ‖ π) grows step after step from a small perturbation of β.
    Ghasemipour et al. trained FAIRL with SAC, maximum-entropy RL, whose entropy bonus adds −α log π(y) to the
    reward. That does not restore β. Near β its linear part, −α (π − β)/β, opposes FAIRL's +(π − β)/β, but at
    π = β the bonus's own direction −α Σ_y ∇π log β is not zero unless β is uniform: the fixed point moves off
    β. And as π(y) → 0, −α log π(y) grows like log(1/π) while −u log u falls like 1/π. Tested at α = 1: the
    direction at π = β is not zero and the flow from near β still runs away. What makes FAIRL work in practice
    (a discriminator short of its optimum, a KL penalty, a trust region) is not derived here.
    r ≤ 1/e (at h = −1), unbounded below.
    """
    h = logits.detach()
    return -h * torch.exp(h)


def importance_weight_reward(logits):
    """r = e^h: at D* (h = log β − log π), e^h = u = β/π, the importance weight of β against π. Its policy
    gradient is the forward KL's, KL(β ‖ π), exactly: the reward FAIRL's derivation asks for. Same shape, detached.

    Derivation. A policy-gradient step holds the reward fixed: with reward r its direction, the expected ascent
    direction of E_π[r] estimated on y ~ π by r(y) ∇log π(y), is Σ_y ∇π(y) r(y). The forward KL's descent
    direction is
        −∇KL(β ‖ π) = −∇Σ_y β(y) (log β(y) − log π(y)) = Σ_y β(y) ∇log π(y) = Σ_y (β/π)(y) ∇π(y),
    the direction of the reward r = β/π = u = e^h: SFT's direction, E_β[∇log π], estimated on the policy's own
    samples (tested by enumeration: cosine +1 with −∇KL(β ‖ π) wherever π is). As a value it says nothing:
    E_π[e^h] = Σ_y β(y) = 1 for every π (AIRL's E_π[h] is −KL(π ‖ β)); it is a reward for its gradient only.

    Variance. Var_π(e^h) = E_π[u²] − (E_π[u])² = Σ_y β²/π − 1 = χ²(β ‖ π), the chi-squared divergence, and the
    one-sample estimate u(y) ∇log π(y) has second moment E_π[u² ‖∇log π‖²] ≤ (1 + χ²(β ‖ π)) max_y ‖∇log π(y)‖².
    By Jensen, KL(β ‖ π) = E_β[log u] ≤ log E_β[u] = log(1 + χ²(β ‖ π)): χ² ≥ e^{KL(β ‖ π)} − 1, at least
    exponential in the forward KL. Where π has little mass on responses β likes, the rare samples that find them
    carry huge weights and dominate the estimate. effective_sample_size measures it on a batch: for n samples
    y_i ~ π with weights w_i = e^{h_i},
        ESS = (Σ_i w_i)² / Σ_i w_i²  ∈ [1, n],     ESS / n → (E_π[u])² / E_π[u²] = 1 / (1 + χ²(β ‖ π))  as n → ∞
    (Kong 1992; tested on a batch with each response in proportion to π). e^h overflows float32 past h ≈ 88;
    compute the ESS from h, not from e^h.
    """
    return torch.exp(logits.detach())


def effective_sample_size(log_weights):
    """Kish's effective sample size of importance weights given by their logs, over the last dim: (..., n) → (...),
        ESS = (Σ_i w_i)² / Σ_i w_i² = exp(2 logsumexp(log w) − logsumexp(2 log w)),
    a COUNT between 1 (one weight dominates the others) and n (all weights equal); divide by n for the fraction of
    the batch. Computed in log space: exact for log-weights far beyond exp's range (h of a log-ratio discriminator,
    tens of nats). Only the weights' ratios matter: a constant added to every log-weight changes nothing.
    For the weights e^h of importance_weight_reward, ESS / n → 1 / (1 + χ²(β ‖ π)) (derived there).
    """
    lw = log_weights.detach()
    return torch.exp(2 * torch.logsumexp(lw, -1) - torch.logsumexp(2 * lw, -1))


# -----------------------------------------------------------------------------
# Reward modelling and extrapolation (the paper's practical algorithm)

def classifier_reward_loss(scores_pos, scores_neg, mask_pos=None, mask_neg=None):
    """The paper's reward model: a binary classifier, positives labelled 1, negatives 0; reward = its logit.

    The same BCE as discriminator_loss, trained once on fixed samples instead of against a moving policy.
    Init-SFT (the paper's choice): positives from π_SFT, negatives from π_init; its optimum is
    classifier_optimum. Init-Demo and SFT-Demo take demonstrations as positives and learn the
    demonstrator's fingerprint rather than quality, the Inverse-RLignment paper argues (README: measured here).
    """
    return discriminator_loss(scores_pos, scores_neg, mask_pos, mask_neg)


def bradley_terry_loss(score_chosen, score_rejected):
    """Preference reward model: P(chosen ≻ rejected) = σ(s_c − s_r); loss = mean of −log σ(s_c − s_r).

    Derived in exercise 4 (not in the student copy):
    Only score differences are learned (a per-prompt constant is free), where the classifier above fixes the
    logit's level: 0 where positives and negatives are equally likely.
    """
    # ---- exercise 4 (bradley_terry): begin solution
    return F.softplus(score_rejected - score_chosen).mean()
    # ---- exercise 4: end solution


def best_of_n(rewards):
    """Best-of-N: rewards (M, N), N candidates for each of M prompts → (M,) index of the best (first on ties)."""
    return rewards.argmax(-1)


def best_of_n_kl(n):
    """KL(π_BoN ‖ π), π_BoN the best of n draws of π by a reward: the x-axis of the paper's Best-of-N plots.
    In closed form, for continuous rewards (no ties, no response of appreciable probability).

    Derived in exercise 11 (not in the student copy):
    KL(π_BoN ‖ π) = log n − (n − 1)/n. With continuous rewards, u = F(r(y)) is uniform under π and the best of
    n has CDF u^n, so π_BoN/π = n u^(n−1) and KL = ∫_0^1 n u^(n−1) log(n u^(n−1)) du = log n − (n − 1)/n.
    Exact when no single response has appreciable probability; for a π with atoms the exact KL,
    Σ_y P_y log(P_y/π(y)) with P_y = F(y)^n − F(y⁻)^n, is smaller and the formula is an upper bound
    (Beirami et al. 2024).
    """
    # ---- exercise 11 (best_of_n_kl): begin solution
    return math.log(n) - (n - 1) / n
    # ---- exercise 11: end solution


def classifier_optimum(logp_pos_seq, logp_neg_seq):
    """log p_pos(y|x) − log p_neg(y|x): the logit of the optimal classifier of positives y ~ p_pos against
    negatives y ~ p_neg, D* = p_pos / (p_pos + p_neg), in closed form (class-balanced BCE, as for the discriminator).
        Init-SFT:  log π_SFT − log π_init   it points the way SFT moved π_init; Best-of-N on it goes further;
        Init-Demo: log β − log π_init;      SFT-Demo: log β − log π_SFT   (only a world that knows β has these).
    """
    return logp_pos_seq - logp_neg_seq


def log_ratio_family(logp_pos, logp_neg, gamma):
    """r_γ(x, y) = log p_pos(y|x) − γ log p_neg(y|x): one knob from likelihood to contrast, sequence level (B,).
        γ = 1: classifier_optimum, the exact logit of the Init-SFT classifier, log π_SFT − log π_init (contrastive
               decoding's score, with π_SFT as the expert and π_init as the amateur);
        γ = 0: log π_SFT alone: Best-of-N on it picks the candidate π_SFT finds most likely;
        0 < γ < 1 tempers the contrast with likelihood; γ > 1 weighs the contrast more than the likelihood.
    With p_pos = π_SFT, p_neg = π_init, the KL-regularised optimum of r_γ, max_π E_π[r_γ] − λ KL(π ‖ π_SFT), is
    π* ∝ π_SFT · exp(r_γ/λ) = π_SFT^{1 + 1/λ} π_init^{−γ/λ} (the derivation in dpo_loss, with π_ref = π_SFT).
    """
    return logp_pos - gamma * logp_neg


def plausible(logp, tau):
    """Contrastive decoding's adaptive plausibility constraint (Li et al. 2023), applied to whole responses.
    logp (M, N): log π_SFT(y|x) of N candidates for each of M prompts → bool (M, N), True where eligible:
        log π_SFT(y|x) ≥ max_j log π_SFT(y_j|x) − τ,   τ ≥ 0 (ValueError for a negative τ).
    Here the candidates are the N sampled responses, and the max is over them. The floor is relative to the best
    candidate of the same prompt, so it adapts: strict where π_SFT is confident, lenient where it is not. The most
    likely candidate is always eligible.

    Answered in exercise 14 (not in the student copy):
    Li et al.'s form, π_SFT(y|x) ≥ α · max_j π_SFT(y_j|x), is the same constraint with τ = −log α (take logs of
    both sides; α ∈ (0, 1] becomes τ ∈ [0, ∞)). Li et al. use α = 0.1 (τ = log 10 ≈ 2.3) per token, over the
    vocabulary. τ = math.inf: every candidate (α = 0); τ = 0: only the most likely, ties included (α = 1).
    A whole response's log-prob falls with its length, so the floor also favours short responses; pass
    per-token mean log-probs to compare responses of different lengths per token (the caller's choice).

    Derived in exercise 14 (not in the student copy):
    Why a log-ratio reward needs it. r = log π_SFT − log π_init (classifier_optimum) is largest where π_init finds
    a response implausible, whether or not it is good. That includes π_SFT's own imitation errors: responses
    π_SFT draws now and then but itself rates unlikely, and π_init rates more unlikely still. With many
    candidates, Best-of-N finds such tail responses, picked for a small denominator rather than for what SFT
    learned. The constraint lets the reward rank only the responses π_SFT itself finds plausible.
    """
    # ---- exercise 14 (plausible_best_of_n): begin solution
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0 (tau = −log α, α ≤ 1), not {tau}")
    return logp >= logp.amax(-1, keepdim=True) - tau
    # ---- exercise 14: end solution


def best_of_n_plausible(rewards, logp, tau):
    """Best-of-N under the plausibility constraint: rewards, logp (M, N) → (M,) index of the highest reward
    among the candidates plausible(logp, tau) keeps, the first on ties (like best_of_n). tau = math.inf: best_of_n.
    """
    # ---- exercise 14 (plausible_best_of_n): begin solution
    eligible = plausible(logp, tau)
    best = rewards.masked_fill(~eligible, -math.inf).amax(-1, keepdim=True)
    # the first eligible candidate with the best reward (an argmax of the masked rewards alone could return an
    # ineligible one when the best eligible reward is itself -inf)
    return (eligible & (rewards == best)).int().argmax(-1)
    # ---- exercise 14: end solution


def extrapolated_logits(logits_sft, logits_init, alpha):
    """The extrapolated policy of ExPO / DeRa in output space, one state at a time: logits (..., V) of π_SFT and
    of π_init at the same states → log-probabilities (..., V) of
        π_α(·|s) ∝ π_SFT(·|s)^{1+α} π_init(·|s)^{−α},   log π_α = log_softmax((1 + α) log π_SFT − α log π_init).
    α = 0: π_SFT. α > 0: past π_SFT along the direction π_init → π_SFT, since up to a constant per state
    log π_α = log π_SFT + α (log π_SFT − log π_init): each token's log-prob moves α times further in the direction
    SFT moved it. α = −1: π_init; −1 < α < 0: a geometric interpolation between the two. (DeRa mixes the two
    models' logits with weights (1 + α, −α); ExPO extrapolates the weights instead, θ_SFT + α (θ_SFT − θ_init).)

    The sequence-level relative. The KL-regularised optimum of the Init-SFT reward,
        max_π E_π[log π_SFT − log π_init] − λ KL(π ‖ π_SFT),  is  π*(y|x) ∝ π_SFT(y|x)^{1+1/λ} π_init(y|x)^{−1/λ}
    (the derivation in dpo_loss, with π_ref = π_SFT): the same form at α = 1/λ, but over whole responses,
    normalised once per prompt. π_α is normalised at every state instead:
        π_α(y|x) = Π_t π_SFT(y_t|s_t)^{1+α} π_init(y_t|s_t)^{−α} / Z_α(s_t),
        Z_α(s) = Σ_a π_SFT(a|s)^{1+α} π_init(a|s)^{−α},
    and Z_α(s_t) depends on the path taken, so π_α ≠ π* in general: π*'s own next-token distribution multiplies
    π_α's by the total unnormalised mass of each token's continuations, a look-ahead π_α does not do. They
    coincide where no decision follows: at a state whose every next token ends the response, and so everywhere
    when responses are one token long (both tested).

    Normalising each model first (log_softmax inside) changes nothing, as each normaliser is a constant per
    state that the outer log_softmax removes; it makes the code read as the formula.
    """
    log_sft, log_init = F.log_softmax(logits_sft, -1), F.log_softmax(logits_init, -1)
    return F.log_softmax((1 + alpha) * log_sft - alpha * log_init, -1)


# -----------------------------------------------------------------------------
# Preference optimisation without a reward model: DPO, and SPIN on demonstrations

def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, kl_coef):
    """DPO (Rafailov et al. 2023): fit the policy to preference pairs (x, y_w ≻ y_l) directly, no reward model.
    Inputs (B,): sequence log-probs log π(y|x) of the policy and log π_ref(y|x) of the frozen reference, on the
    chosen y_w and the rejected y_l of B pairs; λ = kl_coef. Returns the mean over the pairs of
        −log σ(λ [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]),
    computed as softplus(−margin), finite at any margin (log σ(m) would be log 0 = −inf once σ(m) underflows).

    Derivation. The objective DPO solves is RL's, for each prompt: max_π E_{y~π}[r(x, y)] − λ KL(π ‖ π_ref),
    reverse KL to the reference, λ its weight. Write π*(y|x) = π_ref(y|x) exp(r(x, y)/λ) / Z(x), with
    Z(x) = Σ_y π_ref(y|x) exp(r(x, y)/λ); then E_π[r] − λ KL(π ‖ π_ref) = −λ KL(π ‖ π*) + λ log Z(x), so the
    optimum is π = π* ∝ π_ref · exp(r/λ). Inverted: r(x, y) = λ log π*(y|x)/π_ref(y|x) + λ log Z(x). The
    Bradley–Terry model of preferences, P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)), sees only reward
    differences, in which λ log Z(x) cancels. Put the policy π in the place of π* and maximise the preferences'
    likelihood over π: the loss above. It is bradley_terry_loss on DPO's implicit reward
        r_π(x, y) = λ log π(y|x)/π_ref(y|x),
    so at its population optimum r_π = r + c(x), i.e. π = π* ∝ π_ref · exp(r/λ) (tested by enumeration).
    DPO's papers call the coefficient β; here β is the expert, and the coefficient is exactly the KL weight λ of
    the objective solved (kl_coef, as in kl_shaped_advantages): the larger λ, the closer π stays to π_ref.

    Gradient: ∇L = −λ σ(−margin) [∇log π(y_w|x) − ∇log π(y_l|x)] per pair: it raises the chosen, lowers the
    rejected, most for pairs the implicit reward orders wrongly. π_ref's log-probs are constants (detached).

    SPIN (Chen et al. 2024) aligns from demonstrations alone with the same loss: y_w is a demonstration
    y ~ β(·|x), y_l the current model's own sample y' ~ π_t(·|x) for the same prompt, π_ref = π_t (the previous
    iterate, which drew y_l); each iteration minimises the loss to get π_{t+1}. Why π = β, the data distribution,
    is a fixed point: if π_t = β, chosen and rejected are identically distributed, and at π = π_ref every margin
    is 0, where the per-pair gradient −(λ/2)[∇log π(y_w) − ∇log π(y_l)] is antisymmetric in the two: its
    expectation over a symmetric pair distribution vanishes. In general, at π = π_ref = π_t (the start of every
    iteration) the population gradient is
        −(λ/2) (E_β[∇log π] − E_{π_t}[∇log π]) = −(λ/2) E_β[∇log π] = (λ/2) ∇KL(β ‖ π),
    since E_π[∇log π] = Σ_y ∇π(y) = 0: SFT's gradient (forward KL), times λ/2. The tests prove this identity by
    enumeration (on the tree world and on a K-outcome toy), that it is zero at π = π_ref = β, and that at
    π = π_ref ≠ β it is not and a small step lowers KL(β ‖ π). At π_t = π_SFT, trained to convergence on the same
    demonstrations, E_β[∇log π_SFT] ≈ 0: SPIN's first iteration starts where SFT stopped, without a push.
    Where one iteration ends when trained to convergence, π_{t+1} ∝ π_t (β/π_t)^{1/λ}, and why the iterates
    converge only for λ > ½: spin_iterate_optimum.
    """
    margin = kl_coef * ((logp_chosen - ref_chosen.detach()) - (logp_rejected - ref_rejected.detach()))
    return F.softplus(-margin).mean()


def spin_iterate_optimum(log_pi_t, log_beta, kl_coef):
    """One SPIN iteration trained to convergence, in closed form: log π_{t+1}, normalised over the last dim,
        π_{t+1} ∝ π_t (β/π_t)^{1/λ} = π_t^{1 − 1/λ} β^{1/λ},     λ = kl_coef,
    for a policy free to be any distribution over the outcomes (tabular, or a network that can represent it).
    log_pi_t, log_beta (..., K): log π_t and log β of K outcomes (whole responses) of each prompt; β is the
    distribution the demonstrations are drawn from (their empirical distribution, for a finite set).

    Derivation. One iteration minimises the population loss of dpo_loss with chosen y ~ β, rejected y' ~ π_t,
    independent, and reference π_t:
        L(π) = Σ_{y, y'} β(y) π_t(y') softplus(−[s(y) − s(y')]),     s = λ log(π/π_t), the implicit reward.
    L sees π only through the differences s(y) − s(y'), in which π's normaliser cancels. Group the ordered pairs
    into unordered ones {a, b}, a ≠ b (a pair (a, a) adds the constant β(a) π_t(a) log 2):
        ℓ_ab(d) = p softplus(−d) + q softplus(d),   d = s(a) − s(b),   p = β(a) π_t(b),   q = β(b) π_t(a),
    a logistic loss in d alone, strictly convex, with its minimum where σ(d) = p/(p + q):
        d* = log(p/q) = [log β(a) − log π_t(a)] − [log β(b) − log π_t(b)].
    Every pair's minimiser is met at once by s(y) = log β(y) − log π_t(y) + c, i.e.
        λ log(π_{t+1}/π_t) = log(β/π_t) + const,
    so that s minimises every term of L: it is the global minimum, not only a stationary point, and the only
    one up to c where β and π_t have full support (tested: L-BFGS on the population loss finds it). Read as DPO:
    SPIN's pairs are Bradley–Terry labels of the reward r = log β − log π_t, the oracle's reward at π_t (the
    reverse KL's, airl_reward at D*), and the minimiser is DPO's π* ∝ π_t exp(r/λ).

    Contraction. Let e_t = log π_t − log β, up to an additive constant (normalisation); centre it (subtract its
    mean over the outcomes), ē_t. Then log π_{t+1} − log β = (1 − 1/λ)(log π_t − log β) + const, so
        ē_{t+1} = (1 − 1/λ) ē_t,    ē_t = (1 − 1/λ)^t ē_0.
    Iterations trained to convergence
        λ = 1:         reach β in one iteration;
        λ > 1:         contract monotonically (factor 1 − 1/λ in (0, 1));
        ½ < λ < 1:     contract, overshooting β at every iteration (factor in (−1, 0));
        λ = ½:         cycle with period 2 (π_{t+2} = π_t);
        λ < ½:         oscillate with growing amplitude (|1 − 1/λ| > 1): each iterate over-weights the outcomes
                       the previous one under-weighted, by more; at λ = 0.1 the error is multiplied by −9 at every
                       iteration, and KL(β ‖ π_t) grows (tested).
    Chen et al. iterate with λ = 0.1 (their β) and a learning rate of 5e-7 (uclaml/SPIN's configs/config.yaml),
    so that no iteration nears this optimum: what they iterate is a short run of small steps, each of which starts
    along (λ/2)∇KL(β ‖ π) (dpo_loss's docstring), not the optimum's map.
    """
    return F.log_softmax(log_pi_t + (log_beta - log_pi_t) / kl_coef, -1)


# -----------------------------------------------------------------------------
# Token-level divergences between two full next-token distributions

def _kl(log_a, log_b):
    return (log_a.exp() * (log_a - log_b)).sum(-1)  # KL(a ‖ b) over the last dim


def generalized_jsd(logits_p, logits_q, w):
    """Generalised Jensen–Shannon divergence of p = softmax(logits_p) and q = softmax(logits_q), over the last
    (vocab) dim; returns one value per position (shape logits.shape[:-1]): mask and average as you need.
        JSD_w(p ‖ q) = w KL(p ‖ m) + (1 − w) KL(q ‖ m),   m = w p + (1 − w) q.
    w = 0.5 is the symmetric Jensen–Shannon; JSD_w(p ‖ q) = JSD_{1−w}(q ‖ p).
    The ends are explicit cases, by convention (GKD, Agarwal et al. 2024):
        w = 0 → KL(p ‖ q),   w = 1 → KL(q ‖ p).
    They are not the formula's limits: the formula tends to 0 at both ends.

    Answered in exercise 13 (not in the student copy):
    With p the expert and q the policy, w = 0 is the forward KL (mass-covering) and w = 1 the reverse KL
    (mode-seeking).

    Derived in exercise 13 (not in the student copy):
    As w → 0, m → q and JSD_w ≈ w KL(p ‖ q) → 0; as w → 1, JSD_w ≈ (1 − w) KL(q ‖ p) → 0. It is
    JSD_w / (w(1 − w)) that tends to the two KLs.
    """
    # ---- exercise 13 (generalized_jsd): begin solution
    log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    if w == 0:
        return _kl(log_p, log_q)
    if w == 1:
        return _kl(log_q, log_p)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(w), log_q + math.log(1 - w)]), 0)
    return w * _kl(log_p, log_m) + (1 - w) * _kl(log_q, log_m)
    # ---- exercise 13: end solution
