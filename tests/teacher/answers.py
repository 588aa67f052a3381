"""
The teacher's answers to the tests of exercises.py: not in a student copy (exercises.TEACHER_ONLY), which is why
they are here and not in tests/test_exercises.py. Plain data, standard library only; exercises.py loads this
file (exercises.teacher_answers) to make a student copy, and tests/test_exercises.py to test one.

- WRONG: plausible wrong answers, most of them one token from the right one, and what the first line of their
  check must say (the check's message also states what was expected and what came back);
- RIGHT: right answers in another form than the solution tree's, which must pass their check;
- PLANTED: the wrong answers of test_check_names_the_broken_equation_and_the_missing_exercise;
- DERIVED_RESULTS: a phrase of each result that an exercise asks the student to derive, which its derived
  paragraph in objectives.py states;
- HIDDEN: for each exercise, the patterns of what it asks the student to derive, think through or predict, none
  of which may appear in any file of a fresh student copy, nor in any file that a run there writes;
- LEFT_OUT: passages of files other than objectives.py that state such a result, and what the student copy says
  instead (objectives.py has its own markers: "Derived in exercise N (not in the student copy):").
"""
import re


def phrase(text):
    """A regex of text, whatever its line breaks and runs of spaces."""
    return r"\s+".join(re.escape(word) for word in text.split())


# (exercise, function, the wrong answer, what the first line of its check must say)
WRONG = [
    (1, "sft_loss", """
        nll = -_response(logp, mask).sum()
        return nll / mask.sum() if normalize == "tokens" else nll / logp.shape[0]   # no ValueError
        """, "sft_loss(normalize='mean') returns tensor(1.): it must raise ValueError"),
    (1, "sft_loss", """
        nll = -_response(logp, mask).sum(-1)
        if normalize == "tokens":
            return (nll / mask.sum(-1)).mean()   # each response's mean first
        if normalize == "sequences":
            return nll.mean()
        raise ValueError(normalize)
        """, "sft_loss('tokens') averages within each response first"),
    (1, "sft_loss", """
        nll = -(logp * mask).sum()
        if normalize == "tokens":
            return nll / mask.sum()
        if normalize == "sequences":
            return nll / logp.shape[0]
        raise ValueError(normalize)
        """, "sft_loss('tokens') reads prompt/padding positions"),
    (1, "sft_loss", """
        nll = -_response(logp, mask).sum()
        if normalize == "tokens":
            return (nll / mask.sum()).item()   # a float: no gradient
        if normalize == "sequences":
            return (nll / logp.shape[0]).item()
        raise ValueError(normalize)
        """, "expected a tensor of shape () (a scalar), got float"),
    (2, "forward_kl_mc", "return policy_logp_seq - expert_logp_seq",
     "forward_kl_mc: log π − log β, the wrong way round"),
    (2, "forward_kl_mc", "return (expert_logp_seq - policy_logp_seq).mean()",
     "forward_kl_mc on inputs of shape (3,), (3,): expected one term per sequence, shape (3,), got shape ()"),
    (2, "reverse_kl_mc", "return (policy_logp_seq - expert_logp_seq).clamp_min(0)",
     "reverse_kl_mc: a negative term made non-negative"),
    (2, "reverse_kl_mc", "return (policy_logp_seq - expert_logp_seq).detach()",
     "reverse_kl_mc must keep its gradient"),
    (4, "bradley_terry_loss", "return -torch.log(torch.sigmoid(score_chosen - score_rejected)).mean()",
     "bradley_terry_loss is inf at s_c − s_r = -150 in float32"),
    (4, "bradley_terry_loss", "return torch.log1p(torch.exp(score_rejected - score_chosen)).mean()",
     "bradley_terry_loss is inf at s_c − s_r = -150 in float32"),
    (4, "bradley_terry_loss", "return F.softplus(score_rejected - score_chosen).sum()",
     "bradley_terry_loss != mean −log σ(s_c − s_r)"),
    (5, "rewards_to_go", """
        r = _response(token_rewards, mask)   # not detached
        return _response(r.flip(-1).cumsum(-1).flip(-1), mask)
        """, "rewards_to_go carries a gradient back to token_rewards"),
    (5, "rewards_to_go", "return _response(token_rewards.detach().flip(-1).cumsum(-1).flip(-1), mask)",
     "rewards_to_go: a reward off the response leaks into R_t"),
    (5, "rewards_to_go", "return _response(token_rewards.detach(), mask).flip(-1).cumsum(-1).flip(-1)",
     "rewards_to_go is [6.0, 0.0] off the response, not 0"),
    (5, "rewards_to_go", """
        r, out = _response(token_rewards.detach(), mask), torch.zeros_like(token_rewards)
        for t in range(r.shape[-1]):
            out[:, t] = r[:, t:].sum(-1)
        return _response(out, mask)
        """, "rewards_to_go has a Python loop"),
    (5, "rewards_to_go", "return _response(_response(token_rewards.detach(), mask).cumsum(-1), mask)",
     "rewards_to_go sums the rewards up to t"),
    (6, "leave_one_out_advantages", """
        r = rewards.view(-1, group_size)   # not detached
        return (r - (r.sum(-1, keepdim=True) - r) / (group_size - 1)).view(-1)
        """, "leave_one_out_advantages carries a gradient back to the rewards"),
    (6, "leave_one_out_advantages", """
        r = rewards.detach().view(-1, group_size)
        return (r - r.mean(-1, keepdim=True)).view(-1)
        """, "leave_one_out_advantages subtracts the group mean including r_i itself"),
    (6, "leave_one_out_advantages", """
        r = rewards.detach().view(-1, group_size)
        return (r - (r.sum(-1, keepdim=True) - r) / group_size).view(-1)   # G, not G − 1
        """, "leave_one_out_advantages: A_i != r_i − mean of the other group members: expected"),
    (6, "reverse_kl_reinforce_loss", """
        reward = reverse_kl_mc(sequence_logprob(logp, mask), expert_logp_seq)
        return policy_gradient_loss(logp, mask, leave_one_out_advantages(reward, group_size))
        """, "reverse_kl_reinforce_loss: E[∇surrogate] = −∇KL(π‖β), it would increase the KL"),
    (7, "kl_k1", "return (logp - ref_logp).detach()", "kl_k1 must keep its gradient"),
    (7, "kl_k3", """
        ratio = torch.exp(ref_logp) / torch.exp(logp)
        return ratio - 1 - torch.log(ratio)
        """, "kl_k3 is [nan, nan, "),
    (7, "kl_k3", """
        log_ratio = (ref_logp - logp).detach()
        return torch.exp(log_ratio) - 1 - log_ratio
        """, "kl_k3 must keep its gradient"),
    (9, "discriminator_loss", """
        terms = torch.cat([F.softplus(-logits_expert).flatten(), F.softplus(logits_policy).flatten()])
        weights = None if mask_expert is None else torch.cat([mask_expert.flatten(), mask_policy.flatten()])
        return _mean(terms, weights)
        """, "averages the two classes together"),
    (9, "discriminator_loss", "return _mean(F.softplus(logits_expert), mask_expert) "
                              "+ _mean(F.softplus(-logits_policy), mask_policy)",
     "labels the classes the wrong way round: the first argument"),
    (9, "discriminator_loss", """
        d_expert, d_policy = torch.sigmoid(logits_expert), torch.sigmoid(logits_policy)
        return _mean(-torch.log(d_expert), mask_expert) + _mean(-torch.log(1 - d_policy), mask_policy)
        """, "discriminator_loss of a demonstration is inf at h = -100 in float32"),
    (9, "discriminator_loss", """
        loss = _mean(F.softplus(-logits_expert), mask_expert) + _mean(F.softplus(logits_policy), mask_policy)
        return loss.detach()
        """, "discriminator_loss must keep its gradient"),
    (9, "airl_reward", "return logits", "airl_reward carries a gradient back to the discriminator's logits"),
    (9, "airl_reward", """
        d = torch.sigmoid(logits.detach())
        return torch.log(d) - torch.log(1 - d)
        """, "airl_reward is -inf at h = -100 in float32"),
    (9, "gail_reward", "return F.softplus(logits)", "gail_reward carries a gradient back to the discriminator's"),
    (9, "gail_reward", "return -torch.log(1 - torch.sigmoid(logits.detach()))",
     "gail_reward is inf at h = 20 in float32"),
    (11, "best_of_n_kl", "return math.log(n)", "best_of_n_kl(2) = 0.693"),
    (13, "generalized_jsd", """
        log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
        if w == 0:
            return _kl(log_p, log_q)
        if w == 1:
            return _kl(log_q, log_p)
        log_m = torch.log(w * log_p.exp() + (1 - w) * log_q.exp())
        return w * _kl(log_p, log_m) + (1 - w) * _kl(log_q, log_m)
        """, "generalized_jsd(w=0.3) is nan where probabilities underflow in float32"),
    (13, "generalized_jsd", """
        log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(w), log_q + math.log(1 - w)]), 0)
        return w * _kl(log_p, log_m) + (1 - w) * _kl(log_q, log_m)
        """, "generalized_jsd(w=0) raises ValueError (math domain error): the ends are explicit cases"),
    (13, "generalized_jsd", """
        log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
        if w == 0:
            return _kl(log_p, log_q)
        if w == 1:
            return _kl(log_q, log_p)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(w), log_q + math.log(1 - w)]), -1)   # wrong dim
        return w * _kl(log_p, log_m) + (1 - w) * _kl(log_q, log_m)
        """, "expected one value per position, shape (2, 3), got RuntimeError: The size of tensor a"),
    (13, "generalized_jsd", """
        log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
        kl = lambda log_a, log_b: (log_a.exp() * (log_a - log_b)).sum()   # over every dimension
        if w == 0:
            return kl(log_p, log_q)
        if w == 1:
            return kl(log_q, log_p)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(w), log_q + math.log(1 - w)]), 0)
        return w * kl(log_p, log_m) + (1 - w) * kl(log_q, log_m)
        """, "expected one value per position, shape (2, 3), got shape ()"),
    (14, "plausible", """
        if not tau >= 0:
            raise ValueError(tau)
        return logp > logp.amax(-1, keepdim=True) - tau
        """, "plausible(τ = 0.0) on logp = [[-1.0, -2.0, -3.5, -1.0], [-10.0, -11.75, -12.25, -30.0]]: "
             "a strict inequality"),
    (14, "plausible", """
        if not tau >= 0:
            raise ValueError(tau)
        return logp >= logp.amax() - tau
        """, "plausible(τ = 2.0) on logp = [[-1.0, -2.0, -3.5, -1.0], [-10.0, -11.75, -12.25, -30.0]]: "
             "a floor from the whole batch's best"),
    (14, "plausible", """
        if not tau >= 0:
            raise ValueError(tau)
        return logp >= logp.amax(-1, keepdim=True) + tau
        """, "plausible(τ = 2.0) on logp = [[-1.0, -2.0, -3.5, -1.0], [-10.0, -11.75, -12.25, -30.0]]: "
             "a floor above the best (+ τ)"),
    (14, "plausible", "return logp >= logp.amax(-1, keepdim=True) - tau",
     "plausible(τ = −1) must raise ValueError"),
    (14, "best_of_n_plausible", "return rewards.argmax(-1)",
     "best_of_n_plausible(τ = 2.0) on rewards = "),
    (14, "best_of_n_plausible", "return rewards.masked_fill(~plausible(logp, tau), -math.inf).argmax(-1)",
     "best_of_n_plausible: picked an ineligible candidate when every eligible reward is −inf"),
    (14, "best_of_n_plausible", """
        eligible = plausible(logp, tau)
        best = rewards.masked_fill(~eligible, -math.inf).amax(-1, keepdim=True)
        hits = (eligible & (rewards == best)).int()
        return hits.shape[-1] - 1 - hits.flip(-1).argmax(-1)   # the last of ties
        """, "the last of tied rewards: the first wins"),
]

# (exercise, function, a right answer in another form than the solution tree's)
RIGHT = [
    (14, "plausible", """
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0, not {tau}")
        p = logp.exp()   # Li et al.'s own form: p ≥ α · max p
        return p >= math.exp(-tau) * p.amax(-1, keepdim=True)
        """),
]

# test_check_names_the_broken_equation_and_the_missing_exercise: (exercise, function, wrong answer)
PLANTED = [
    (1, "sft_loss", """
        nll = -(logp * mask).sum()   # x * mask lets the NaN of padding through
        return nll / mask.sum() if normalize == "tokens" else nll / logp.shape[0]
        """),
    (5, "rewards_to_go", "return _response(token_rewards.detach().cumsum(-1), mask)   # forwards"),
]

# A phrase of each result an exercise asks the student to derive, which its derived paragraph states
DERIVED_RESULTS = {
    1: ["P (append the token) is the same for β and π, so it cancels"],
    2: ["E_π[∇log π] = 0"],
    4: ["Only score differences are learned"],
    5: ["the same expected gradient as the whole return"],
    6: ["Equivalently A_i = G/(G−1)·(r_i − group mean)", "(last sum: ∇Σ_y π = 0)"],
    7: ["never negative (e^u ≥ 1 + u)", "= −Σ_a π_ref(a|s) ∇log π(a|s)"],
    11: ["log n − (n − 1)/n", "π_BoN/π = n u^(n−1)"],
    13: ["JSD_w ≈ w KL(p ‖ q)"],
    14: ["Why a log-ratio reward needs it"],
}

# What each exercise asks the student to derive (Derive), think through (Think) or predict (an experiment), as
# regexes none of which may match any file of a fresh student copy nor any file a run there writes; each matches
# somewhere in the full project (the teacher's files, a derived or answered paragraph, a LEFT_OUT passage).
HIDDEN = {
    3: [phrase("SFT's gold reward drops along with the demonstrations'"),
        phrase("Best-of-N with Init-SFT gains less")],
    7: [phrase("Where it enters:")],   # Think: where afd_mini.py puts its KL penalty, and which KL it gives
    8: [phrase("a larger kl_coef pulls each of the twelve policies back"), phrase("At kl_coef = 0 they move furthest")],
    10: [phrase("The divergence decides what"), phrase("The reverse-KL policies (mode-seeking)")],
    11: [r"log\s*\(?\s*[nN]\s*\)?\s*[−-]\s*\(\s*[nN]\s*[−-]\s*1\s*\)\s*/\s*[nN]",   # log n − (n − 1)/n, any notation
         r"log\s*\(?\s*[nN]\s*\)?\s*[−-]\s*1\s*\+\s*1\s*/\s*[nN]"],                  # log n − 1 + 1/n
    12: [phrase("The subtlety a strong answer raises"), phrase("the gap shrinks.")],
    13: [phrase("w = 0 is the forward KL (mass-covering)"),    # Think: which end covers, which seeks modes
         phrase("The Jensen–Shannon fit sits on one mode")],   # Think: the fit at w = 0.5
    14: [r"imitation\s+errors?",                                # Derive: why a log-ratio reward needs the floor
         phrase("largest where π_init finds a response"),
         r"τ\s*=\s*[−-]\s*log\s*α",                             # Think 1: τ in terms of α
         phrase("the floor also favours short responses")],     # Think 3
}
for n in (3, 8, 10, 12):   # the summary line of EXERCISES.md's former <details> blocks of the predictions
    HIDDEN[n].append(phrase("What a good prediction looks like"))

# (exercise, path, regex of a passage that states what the exercise asks, what the student copy says instead)
LEFT_OUT = [
    (14, "README.md",
     phrase("log π_SFT − log π_init is largest where π_init finds a response implausible, good or not, and that "
            "includes π_SFT's own imitation errors. As N grows, Best-of-N finds them: its picks drift"),
     "Why it does is exercise 14's Derive question (not in the student copy). As N grows, Best-of-N's picks drift"),
    (14, "README.md",
     phrase("Best-of-N by Init-SFT stops at the demonstrations: the log-ratio also rewards π_SFT's imitation errors, "
            "which larger N finds (below)."),
     "Best-of-N by Init-SFT stops at the demonstrations (why: exercise 14; what larger N picks: below)."),
    (14, "docs/RESULTS.md",
     r"The log-ratio is largest where [^*]*?even less\s+likely\.\s+As N grows Best-of-N finds more of each:",
     "(Which responses the log-ratio rates highest, and why, is exercise 14's Derive question: not in the student "
     "copy.) As N grows, Best-of-N's picks change:"),
]
