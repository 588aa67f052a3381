"""
The answer key for objectives.py: every estimator and surrogate is checked against the divergence it claims,
computed by brute force over a world small enough to enumerate.

The world: a tabular autoregressive policy over {a, b, EOS}. A response ends at EOS or is cut at max_len
tokens, so every response can be listed with its exact probability. A policy is a table of logits, one
row per state (the prefix so far), and yields per-token log-probs in the (B, T) + mask format of
objectives.py, with a prompt token in column 0 (masked). Expectations are exact sums, Σ_y p(y) f(y), and
expected gradients are Σ_y p(y) ∇f(y) with the weights p(y) detached.

Bugs that the enumeration cannot see, and the tests that guard against them:
- discriminator_loss without masks (the sequence-level discriminator, every classifier reward model) averaging
  the two classes together, or summing, when the batches differ in size (64 policy samples against 16
  demonstrations): the policy class then weighs 4×. test_discriminator_loss_without_masks_averages_each_class
  (by hand) and test_discriminator_fit_on_replicated_samples_recovers_log_ratio (a fit on copies of the
  responses in proportion to β and to π, 1:3, must still give log β − log π).
- a test comparing a function with itself: the expected values are computed here (log π_SFT − log π_init,
  softplus by hand), never by the function under test.
- dpo_loss as −log σ(margin): exact in the float64 enumeration, +inf in float32 once σ(margin) underflows.
  test_dpo_loss_is_finite_at_extreme_margins_in_float32 (float32, margins up to 1e4).
"""

import ast
import functools
import inspect
import itertools
import math
import re
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import objectives as obj

EOS, VOCAB = 2, 3  # tokens: a = 0, b = 1, EOS = 2


@pytest.fixture(autouse=True)
def float64():
    """Exact sums deserve exact arithmetic: every test runs in float64 (restored afterwards)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def make_tree(max_len):
    """Every complete response over {a, b, EOS} of at most max_len tokens, with the states it passes."""
    states = [p for n in range(max_len) for p in itertools.product((0, 1), repeat=n)]
    index = {s: i for i, s in enumerate(states)}
    responses = [s + (EOS,) for s in states] + list(itertools.product((0, 1), repeat=max_len))
    steps = [[(index[y[:t]], y[t]) for t in range(len(y))] for y in responses]
    n = len(responses)
    mask = torch.zeros(n, 1 + max_len, dtype=torch.bool)   # column 0: the prompt
    state = torch.zeros(n, 1 + max_len, dtype=torch.long)
    action = torch.zeros(n, 1 + max_len, dtype=torch.long)
    visits = torch.zeros(n, len(states), VOCAB, dtype=torch.float64)   # 1 where response y takes a at s
    for i, st in enumerate(steps):
        for t, (s, a) in enumerate(st):
            mask[i, 1 + t], state[i, 1 + t], action[i, 1 + t] = True, s, a
            visits[i, s, a] = 1.0
    return SimpleNamespace(n_states=len(states), steps=steps, mask=mask, state=state, action=action,
                           visits=visits)


def random_policy(tree, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tree.n_states, VOCAB, generator=g).requires_grad_(grad)


def token_logp(theta, tree):
    """(n_responses, 1 + max_len) per-token log-probs, 0 off the response."""
    logpi = F.log_softmax(theta, -1)
    return torch.where(tree.mask, logpi[tree.state, tree.action], 0.0)


def seq_logp(theta, tree):
    """Brute force log π(y): a Python sum over each response's (state, token) steps."""
    logpi = F.log_softmax(theta, -1)
    return torch.stack([sum(logpi[s, a] for s, a in st) for st in tree.steps])


def kl(logp, logq):
    """KL(p ‖ q) of two enumerated distributions given by their log-probabilities."""
    return (logp.exp() * (logp - logq)).sum()


def js(logp, logq):
    logm = torch.log((logp.exp() + logq.exp()) / 2)
    return (kl(logp, logm) + kl(logq, logm)) / 2


def grad(scalar, theta):
    return torch.autograd.grad(scalar, theta, retain_graph=True)[0]


def expectation(probs, f_of_row):
    """Σ_y p(y) f(y), exact; f_of_row(row) gets a slice selecting one response (a batch of one)."""
    return sum(probs[i] * f_of_row(slice(i, i + 1)) for i in range(len(probs)))


def expected_pg_grad(theta, tree, advantages):
    """E_{y~π}[∇ policy_gradient_loss] with advantages (one per response, or per token) held fixed."""
    logp, p = token_logp(theta, tree), seq_logp(theta, tree).exp().detach()
    return grad(expectation(p, lambda row: obj.policy_gradient_loss(logp[row], tree.mask[row], advantages[row])),
                theta)


def fit_logits(loss_fn, shape):
    """A tabular discriminator/classifier (one free logit per cell), trained to convergence, full batch."""
    h = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.LBFGS([h], max_iter=500, tolerance_grad=1e-12, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(h)
        loss.backward()
        return loss
    opt.step(closure)
    return h.detach()


def show(x, k=6):
    """A number or a tensor in one short line: its values to 4 significant digits (the first k of a larger
    tensor), and its shape unless it is a short vector."""
    if not isinstance(x, torch.Tensor):
        return f"{x:.6g}" if isinstance(x, float) else repr(x)
    values = x.detach().flatten().tolist()
    text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values[:k])
    text = f"[{text}{', …' if len(values) > k else ''}]"
    return text if x.dim() == 1 and len(values) <= k else f"{text} (shape {tuple(x.shape)})"


def assert_close(actual, expected, msg, atol=1e-8, rtol=1e-6):
    """torch.testing.assert_close, failing in one line: msg, then what was expected and what came back (the shape or
    dtype where those differ, else the values and the largest difference)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{msg}: expected shape {tuple(expected.shape)}, got shape {tuple(actual.shape)}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{msg}: expected dtype {expected.dtype}, got {actual.dtype}")
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    except AssertionError:
        diff = (actual.detach() - expected.detach()).abs().nan_to_num(math.inf)
        flat, where = int(diff.flatten().argmax()), []
        for n in reversed(diff.shape):   # the index of the largest difference
            flat, i = divmod(flat, n)
            where.insert(0, i)
        where = tuple(where)
        largest = f"; largest difference {diff.max().item():.3g}" + (f" at index {where}" if where else "")
        raise AssertionError(f"{msg}: expected {show(expected)}, got {show(actual)}"
                             + (largest if actual.numel() > 1 else "")) from None


def assert_differs(a, b, msg):
    assert (a - b).abs().max() > 1e-3, msg


# What each exercise's function returns, checked on every call the answer key makes (the autouse fixture
# `contracts` below): a result of the wrong shape, a lost gradient or a RuntimeError inside the function (a shape
# that does not broadcast) fails there, in one line that says what was expected and what came back, not as
# PyTorch's error further on ("element 0 of tensors does not require grad", "the size of tensor a must match").
# name: (its result in words, its shape from its arguments' shapes, whether it must keep the gradient of its
# inputs). The ones that keep no gradient are either constants by definition (rewards, advantages: their own
# tests check that they are detached) or not differentiated anywhere.
_both = lambda a, b, *rest, **kw: torch.broadcast_shapes(a.shape, b.shape)
CONTRACTS = {
    "sft_loss": ("a scalar", lambda *a, **kw: (), True),
    "forward_kl_mc": ("one term per sequence", _both, False),
    "reverse_kl_mc": ("one term per sequence", _both, True),
    "leave_one_out_advantages": ("one advantage per reward", lambda r, *a, **kw: r.shape, False),
    "rewards_to_go": ("token_rewards' shape", lambda r, *a, **kw: r.shape, False),
    "reverse_kl_reinforce_loss": ("a scalar", lambda *a, **kw: (), True),
    "kl_k1": ("one value per token", _both, True),
    "kl_k3": ("one value per token", _both, True),
    "discriminator_loss": ("a scalar", lambda *a, **kw: (), True),
    "airl_reward": ("one reward per logit", lambda h, *a, **kw: h.shape, False),
    "gail_reward": ("one reward per logit", lambda h, *a, **kw: h.shape, False),
    "bradley_terry_loss": ("a scalar", lambda *a, **kw: (), True),
    "plausible": ("one flag per candidate", lambda logp, *a, **kw: logp.shape, False),
    "best_of_n_plausible": ("one index per prompt", lambda r, *a, **kw: r.shape[:-1], False),
    "generalized_jsd": ("one value per position", lambda p, q, *a, **kw: _both(p, q)[:-1], True),
}


def _shapes(args):
    return ", ".join(str(tuple(a.shape)) if isinstance(a, torch.Tensor) else repr(a) for a in args)


def contract(name, f):
    """f, checked against CONTRACTS[name] on each call."""
    words, shape_of, keeps_grad = CONTRACTS[name]

    @functools.wraps(f)
    def checked(*args, **kwargs):
        expected = tuple(shape_of(*args, **kwargs))
        called = f"{name} on inputs of shape {_shapes(args)}"
        try:
            out = f(*args, **kwargs)
        except NotImplementedError:   # a blanked exercise (a RuntimeError too): exercises.py check says so
            raise
        except (RuntimeError, IndexError) as e:   # a shape that does not broadcast, a dimension out of range
            error = str(e).strip().split("\n")[0]
            hint = " (a sum, softmax or index over the wrong dimension?)" * bool(re.search(r"size|dim|shape", error))
            raise AssertionError(f"{called}: expected {words}, shape {expected}, got {type(e).__name__}: {error}"
                                 + hint) from None
        if not isinstance(out, torch.Tensor):
            raise AssertionError(f"{called}: expected a tensor of shape {expected} ({words}), got "
                                 f"{type(out).__name__} {out!r}" + (" (did you use .item()?)" * keeps_grad))
        if tuple(out.shape) != expected:
            raise AssertionError(f"{called}: expected {words}, shape {expected}, got shape {tuple(out.shape)}")
        needs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if keeps_grad and needs and torch.is_grad_enabled() and not out.requires_grad:
            raise AssertionError(f"{name} must keep its gradient: expected a tensor that requires grad (its input "
                                 f"does), got one that does not (did you .detach() or use .item()?)")
        return out
    return checked


@pytest.fixture(autouse=True)
def contracts(monkeypatch):
    """Every exercise's function checked on each call (CONTRACTS); the calls inside objectives.py too."""
    for name in CONTRACTS:
        monkeypatch.setattr(obj, name, contract(name, getattr(obj, name)))


TREE = make_tree(3)   # 15 responses, 7 states
N = len(TREE.steps)


# -----------------------------------------------------------------------------
# the world and the SFT loss

def test_world_is_a_distribution_and_sequence_logprob_sums_tokens():
    theta = random_policy(TREE, 0)
    lp = obj.sequence_logprob(token_logp(theta, TREE), TREE.mask)
    assert_close(lp, seq_logp(theta, TREE), "sequence_logprob: log π(y) != Σ_t log π(y_t|s_t)")
    assert_close(lp.exp().sum(), torch.tensor(1.0), "the enumerated responses' probabilities do not sum to 1")


def test_sft_loss_ignores_masked_positions_exactly():
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0],
                         [0.0, -3.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[False, True, True, False],
                         [False, True, False, False]])
    tokens = obj.sft_loss(logp, mask, "tokens").item()
    assert tokens != (3 / 2 + 3 / 1) / 2, \
        f"sft_loss('tokens') averages within each response first: divide the batch's summed NLL by its response " \
        f"tokens (expected 6/3 = 2, got (3/2 + 3/1)/2 = {tokens:.6g})"
    assert tokens == 6 / 3, f"sft_loss('tokens'): Σ NLL / #response tokens: expected 6/3 = 2, got {tokens:.6g}"
    sequences = obj.sft_loss(logp, mask, "sequences").item()
    assert sequences == 6 / 2, f"sft_loss('sequences'): Σ NLL / B: expected 6/2 = 3, got {sequences:.6g}"
    garbage = torch.where(mask, logp.detach(), float("nan"))   # padding: NaN
    garbage[:, 0] = 1e4                                       # prompt: a huge, wrong log-prob
    garbage.requires_grad_(True)
    for normalize in ("tokens", "sequences"):
        loss, clean = obj.sft_loss(garbage, mask, normalize), obj.sft_loss(logp, mask, normalize)
        assert loss.item() == clean.item(), \
            f"sft_loss({normalize!r}) reads prompt/padding positions (NaN and 1e4 there; 0 · NaN = NaN): " \
            f"expected {clean.item():.6g}, as without them, got {loss.item():.6g}"
        g = grad(loss, garbage)
        assert (g[~mask] == 0).all(), \
            f"sft_loss({normalize!r}) sends gradient to masked positions: expected 0 there, got {show(g[~mask])}"


def test_sft_loss_rejects_an_unknown_normalize():
    logp, mask = torch.tensor([[0.0, -1.0]]), torch.tensor([[False, True]])
    for bad in ("mean", "token", None):
        try:
            got = obj.sft_loss(logp, mask, bad)
        except ValueError:
            continue
        except NotImplementedError:   # a blanked exercise: exercises.py check says so
            raise
        except Exception as e:
            assert False, f"sft_loss(normalize={bad!r}) raises {type(e).__name__}, not the ValueError of its " \
                          f"docstring: expected ValueError, got {type(e).__name__}: {e}"
        assert False, f"sft_loss(normalize={bad!r}) returns {got!r}: it must raise ValueError for any other " \
                      f"normalize (expected ValueError, got {show(got)})"


def test_sft_loss_is_forward_kl():
    theta, expert = random_policy(TREE, 1, grad=True), random_policy(TREE, 2)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    logp, beta = token_logp(theta, TREE), logp_beta.exp()
    expected_loss = expectation(beta, lambda row: obj.sft_loss(logp[row], TREE.mask[row], "sequences"))
    entropy = -(beta * logp_beta).sum()
    assert_close(expected_loss, kl(logp_beta, logp_pi) + entropy, "sft_loss: E_β[loss] != KL(β‖π) + H(β)")
    g = grad(expected_loss, theta)
    assert_close(g, grad(kl(logp_beta, logp_pi), theta), "sft_loss: E_β[∇loss] != ∇KL(β‖π)")
    assert_differs(g, grad(kl(logp_pi, logp_beta), theta), "test has no teeth: ∇KL(β‖π) == ∇KL(π‖β) here")


# -----------------------------------------------------------------------------
# Monte Carlo KL against a known expert

def test_kl_mc_estimators_hand_example():
    log_beta, log_pi = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([-2.0, -1.0, -2.0])   # of three responses
    for name, got, own, other in (("forward_kl_mc", obj.forward_kl_mc(log_beta, log_pi), "β", "π"),
                                  ("reverse_kl_mc", obj.reverse_kl_mc(log_pi, log_beta), "π", "β")):
        expected = log_beta - log_pi if own == "β" else log_pi - log_beta
        assert not torch.allclose(got, -expected), \
            f"{name}: log {other} − log {own}, the wrong way round: its samples come from {own}, " \
            f"so log {own} goes first (expected {show(expected)}, got {show(got)})"
        assert not torch.allclose(got, expected.abs()) and not torch.allclose(got, expected.clamp_min(0)), \
            f"{name}: a negative term made non-negative: single terms can be negative, only their mean is a KL " \
            f"(expected {show(expected)}, got {show(got)})"
        assert_close(got, expected, f"{name}: the term of each sequence != log {own} − log {other}")


def test_kl_mc_estimators_are_unbiased_in_their_own_direction():
    theta, expert = random_policy(TREE, 3, grad=True), random_policy(TREE, 4)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    fwd = (logp_beta.exp() * obj.forward_kl_mc(logp_beta, logp_pi)).sum()
    rev = (logp_pi.exp().detach() * obj.reverse_kl_mc(logp_pi, logp_beta)).sum()
    assert_close(fwd, kl(logp_beta, logp_pi), "forward_kl_mc: E_β[log β − log π] != KL(β‖π)")
    assert_close(rev, kl(logp_pi, logp_beta), "reverse_kl_mc: E_π[log π − log β] != KL(π‖β)")
    assert_differs(fwd, rev, "test has no teeth: KL(β‖π) == KL(π‖β) here")
    assert_close(grad(rev, theta), torch.zeros_like(theta),
                 "reverse_kl_mc: its gradient on policy samples should be 0 in expectation")


# -----------------------------------------------------------------------------
# policy optimisation

@pytest.mark.parametrize("level", ["sequence", "token"])
def test_kl_shaped_advantages_give_the_gradient_of_reward_minus_kl_to_the_reference(level):
    """The policy-gradient loop's advantages, by enumeration over every pair of samples of one prompt (a group of
    2, y_1, y_2 ~ π independently): E[∇ policy_gradient_loss] = −∇(E_π[R] − λ KL(π ‖ π_ref)). R is a random
    reward per response (sequence level) or per (state, token) summed over the response (token level: the
    reward-to-go). Fails for a baseline that includes the sample itself, a penalty with the wrong sign or not
    summed over tokens, reward-to-go summed the wrong way."""
    theta, ref = random_policy(TREE, 30, grad=True), random_policy(TREE, 31)
    g = torch.Generator().manual_seed(32)
    logp, ref_logp = token_logp(theta, TREE), token_logp(ref, TREE)
    k1 = (logp - ref_logp).detach()                               # k1 = log π − log π_ref: a reward term, constant
    if level == "sequence":
        reward = torch.randn(N, generator=g)
        expected_return = lambda p: (p * reward).sum()
    else:
        table = torch.randn(TREE.n_states, VOCAB, generator=g)
        reward = torch.where(TREE.mask, table[TREE.state, TREE.action], 0.0)
        expected_return = lambda p: (p * reward.sum(-1)).sum()
    lam = 0.7
    p = seq_logp(theta, TREE).exp()
    w = p.detach()
    loss = 0.0
    for i, j in itertools.product(range(N), repeat=2):   # the group (y_i, y_j), probability π(y_i) π(y_j)
        rows = [i, j]
        adv = obj.kl_shaped_advantages(reward[rows], k1[rows], TREE.mask[rows], lam, group_size=2, whiten=False)
        loss = loss + w[i] * w[j] * obj.policy_gradient_loss(logp[rows], TREE.mask[rows], adv)
    objective = expected_return(p) - lam * kl(seq_logp(theta, TREE), seq_logp(ref, TREE))
    assert_close(grad(loss, theta), -grad(objective, theta), atol=1e-8, rtol=0,
                 msg=f"kl_shaped_advantages ({level} rewards): E[∇PG loss] != −∇(E_π[R] − λ KL(π ‖ π_ref))")


def test_leave_one_out_advantages_hand_example():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    got = obj.leave_one_out_advantages(r, 3)
    assert not torch.allclose(got, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])), \
        f"leave_one_out_advantages subtracts the group mean including r_i itself: the baseline is the others' " \
        f"mean (rewards {show(r)}, groups of 3: expected [-1.5, 0, 1.5, 0, 0, 0], got {show(got)})"
    assert_close(got, torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]),
                 "leave_one_out_advantages: A_i != r_i − mean of the other group members")
    assert not obj.leave_one_out_advantages(r.clone().requires_grad_(True), 3).requires_grad, \
        "leave_one_out_advantages carries a gradient back to the rewards: detach them (advantages are constants; " \
        "expected a result that does not require grad, got one that does)"


def test_rewards_to_go_hand_example():
    r = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0]])   # 9: a prompt and a padding position's reward
    mask = torch.tensor([[False, True, True, True, False]])
    got = obj.rewards_to_go(r, mask)
    assert torch.equal(got[~mask], torch.zeros(2)), \
        f"rewards_to_go is {got[~mask].tolist()} off the response, not 0: mask the result after summing " \
        f"(expected [0, 0] there, got {show(got[~mask])})"
    right = "rewards [9, 1, 2, 3, 9] on mask [F, T, T, T, F]: expected [0, 6, 5, 3, 0]"
    assert not torch.allclose(got, torch.tensor([[0.0, 15.0, 14.0, 12.0, 0.0]])), \
        f"rewards_to_go: a reward off the response leaks into R_t: mask the rewards before summing ({right}, got " \
        f"{show(got[0])})"
    assert not torch.allclose(got, torch.tensor([[0.0, 1.0, 3.0, 6.0, 0.0]])), \
        f"rewards_to_go sums the rewards up to t, Σ_{{t'≤t}}, not the rewards to go, Σ_{{t'≥t}} ({right}, got " \
        f"{show(got[0])})"
    assert_close(got, torch.tensor([[0.0, 6.0, 5.0, 3.0, 0.0]]),
                 "rewards_to_go: R_t != Σ_{t'≥t} r_t' over the response, 0 elsewhere")
    assert not obj.rewards_to_go(r.clone().requires_grad_(True), mask).requires_grad, \
        "rewards_to_go carries a gradient back to token_rewards: detach it (R_t is a constant for the loss; " \
        "expected a result that does not require grad, got one that does)"
    loops = [node for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(obj.rewards_to_go))))
             if isinstance(node, (ast.For, ast.While, ast.comprehension))]
    assert not loops, f"rewards_to_go has a Python loop (line {loops[0].lineno} of the function): write it " \
                      f"with tensor operations (a reversed cumulative sum: flip, cumsum, flip; expected no loop, " \
                      f"got {len(loops)})"


def test_reverse_kl_reinforce_gradient_is_reverse_kl_gradient():
    tree, group = make_tree(2), 3   # 7 responses; all 7³ groups of 3 samples enumerated
    theta, expert = random_policy(tree, 5, grad=True), random_policy(tree, 6)
    logp_pi, logp_beta = seq_logp(theta, tree), seq_logp(expert, tree)
    logp, p = token_logp(theta, tree), logp_pi.exp().detach()
    expected = 0.0
    for idx in itertools.product(range(len(tree.steps)), repeat=group):
        idx = list(idx)
        loss = obj.reverse_kl_reinforce_loss(logp[idx], tree.mask[idx], logp_beta[idx], group)
        expected = expected + p[idx].prod() * loss
    g = grad(expected, theta)
    wanted = grad(kl(logp_pi, logp_beta), theta)
    assert not torch.allclose(g, -wanted), \
        f"reverse_kl_reinforce_loss: E[∇surrogate] = −∇KL(π‖β), it would increase the KL: the reward's sign is " \
        f"wrong (expected ∇KL(π‖β) = {show(wanted, 4)}, got {show(g, 4)})"
    assert_close(g, grad(kl(logp_pi, logp_beta), theta),
                 "reverse_kl_reinforce_loss: E[∇surrogate] != ∇KL(π‖β)")
    assert_differs(g, grad(kl(logp_beta, logp_pi), theta), "test has no teeth: ∇KL(π‖β) == ∇KL(β‖π) here")


def test_ppo_clip_loss_hand_example():
    delta = torch.tensor([[0.5, 0.5, -0.5, -0.5, 0.1, 7.0]])   # log ρ per token; the last is masked out
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    logp = delta.clone().requires_grad_(True)
    loss = obj.ppo_clip_loss(logp, torch.zeros_like(delta), adv, mask, clip_eps=0.2)
    e = math.exp
    # min(ρA, clip(ρ)A): clipped (1.2), unclipped (−ρ), unclipped (ρ), clipped (−0.8), inside the range (ρ)
    assert_close(loss, torch.tensor(-(1.2 - e(0.5) + e(-0.5) - 0.8 + e(0.1))), "ppo_clip_loss: value")
    assert_close(grad(loss, logp), torch.tensor([[0.0, e(0.5), -e(-0.5), 0.0, -e(0.1), 0.0]]),
                 "ppo_clip_loss: gradient should vanish exactly where the clip binds, and off the mask")


def test_ppo_clip_loss_on_policy_equals_policy_gradient():
    theta = random_policy(TREE, 7, grad=True)
    logp = token_logp(theta, TREE)
    adv = torch.randn(N, generator=torch.Generator().manual_seed(0))
    g_ppo = grad(obj.ppo_clip_loss(logp, logp.detach(), adv, TREE.mask), theta)
    g_pg = grad(obj.policy_gradient_loss(logp, TREE.mask, adv), theta)
    assert_close(g_ppo, g_pg, "ppo_clip_loss at π = π_old: gradient != policy_gradient_loss's")


def test_kl_k1_k3_unbiased_for_reverse_kl_to_reference_and_k3_nonnegative():
    theta, ref = random_policy(TREE, 8, grad=True), random_policy(TREE, 9)
    logp, ref_logp = token_logp(theta, TREE), token_logp(ref, TREE)
    kl_true = kl(seq_logp(theta, TREE), seq_logp(ref, TREE))
    p = seq_logp(theta, TREE).exp().detach()
    k1, k3 = obj.kl_k1(logp, ref_logp), obj.kl_k3(logp, ref_logp)
    assert_close((p[:, None] * k1).sum(), kl_true, "kl_k1: E_π[Σ_t k1] != KL(π‖π_ref)")
    assert_close((p[:, None] * k3).sum(), kl_true, "kl_k3: E_π[Σ_t k3] != KL(π‖π_ref)")
    u = torch.linspace(-30, 30, 2001)
    lowest = min(obj.kl_k3(torch.zeros_like(u), u).min().item(), k3.min().item())
    assert lowest >= 0, f"kl_k3: a negative value: expected k3 ≥ 0 everywhere, got {lowest:.4g}"
    assert (k1 < 0).any(), "test has no teeth: no negative k1 term to contrast with k3"
    # k1 in the reward: the policy gradient with reward −Σ_t k1 carries ∇KL(π‖π_ref)
    g = expected_pg_grad(theta, TREE, -obj.sequence_logprob(k1, TREE.mask))
    assert_close(g, grad(kl_true, theta), "kl_k1 as a reward: E[∇PG loss] != ∇KL(π‖π_ref)")


def test_kl_k3_as_a_loss_pulls_toward_forward_kl_to_reference():
    theta, ref = random_policy(TREE, 10, grad=True), random_policy(TREE, 11)
    logp, ref_logp = token_logp(theta, TREE), token_logp(ref, TREE)
    p = seq_logp(theta, TREE).exp().detach()
    g_k3 = grad((p[:, None] * obj.kl_k3(logp, ref_logp)).sum(), theta)
    reach = torch.einsum("y,ysa->s", p, TREE.visits)   # P_π(reach s)
    logpi, logref = F.log_softmax(theta, -1), F.log_softmax(ref, -1)
    per_state_fwd = (logref.exp() * (logref - logpi)).sum(-1)   # KL(π_ref(·|s) ‖ π(·|s))
    assert_close(g_k3, grad((reach * per_state_fwd).sum(), theta),
                 "kl_k3 as a loss: E_π[∇Σ_t k3] != Σ_s P_π(s) ∇KL(π_ref(·|s) ‖ π(·|s))")
    assert_differs(g_k3, grad(kl(seq_logp(theta, TREE), seq_logp(ref, TREE)), theta),
                   "test has no teeth: k3's loss gradient equals ∇KL(π‖π_ref) here")
    g_k1 = grad((p[:, None] * obj.kl_k1(logp, ref_logp)).sum(), theta)
    assert_close(g_k1, torch.zeros_like(theta), "kl_k1 differentiated directly should average 0")


def test_kl_k3_is_exact_where_both_probabilities_underflow_in_float32():
    """A token both models find unlikely: e^{−110} is 0 in float32, so π_ref/π must come from the log ratio."""
    logp = torch.tensor([-110.0, -130.0, -0.5], dtype=torch.float32)
    ref_logp = torch.tensor([-111.0, -128.0, -0.7], dtype=torch.float32)
    k3 = obj.kl_k3(logp, ref_logp)
    u = (ref_logp - logp).double()
    assert torch.isfinite(k3).all(), \
        f"kl_k3 is {k3.tolist()} at log π = {logp.tolist()} in float32: compute log ratio = ref_logp − logp " \
        f"first, then exp (e^{{−110}} / e^{{−111}} is 0/0): expected {show(u.exp() - 1 - u)}, got {show(k3)}"
    assert_close(k3.double(), u.exp() - 1 - u, atol=1e-6, rtol=1e-5,
                 msg="kl_k3 in float32 != (ratio − 1) − log ratio at small probabilities")


# -----------------------------------------------------------------------------
# discriminators and their rewards

def sequence_discriminator(logp_beta, logp_pi):
    """One logit per response, trained on the exact expected BCE (class weights = exact probabilities)."""
    w_beta, w_pi = logp_beta.exp().detach(), logp_pi.exp().detach()
    return fit_logits(lambda h: obj.discriminator_loss(h, h, w_beta, w_pi), logp_beta.shape)


def test_sequence_discriminator_recovers_log_ratio():
    theta, expert = random_policy(TREE, 12), random_policy(TREE, 13)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    h = sequence_discriminator(logp_beta, logp_pi)
    assert_close(obj.airl_reward(h), logp_beta - logp_pi, atol=1e-6, rtol=0,
                 msg="discriminator_loss → airl_reward: at convergence h != log β − log π")
    w_beta, w_pi = logp_beta.exp(), logp_pi.exp()
    assert_close(obj.discriminator_loss(h, h, w_beta, w_pi), math.log(4) - 2 * js(logp_beta, logp_pi),
                 "discriminator_loss: L(D*) != log 4 − 2·JS(β, π)")


def test_discriminator_rewards_policy_gradients_follow_their_divergences():
    theta, expert = random_policy(TREE, 14, grad=True), random_policy(TREE, 15)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    h = sequence_discriminator(logp_beta, logp_pi)
    g_airl = expected_pg_grad(theta, TREE, obj.airl_reward(h))
    assert_close(g_airl, grad(kl(logp_pi, logp_beta), theta), atol=1e-6, rtol=0,
                 msg="airl_reward: E_π[∇PG loss] != ∇KL(π‖β)")
    assert_differs(g_airl, grad(kl(logp_beta, logp_pi), theta), "test has no teeth: ∇KL(π‖β) == ∇KL(β‖π)")
    assert_close(expected_pg_grad(theta, TREE, obj.gail_reward(h)), grad(2 * js(logp_beta, logp_pi), theta),
                 atol=1e-6, rtol=0,
                 msg="gail_reward: E_π[∇PG loss] != ∇ 2·JS(β, π)")
    fairl = obj.fairl_reward(h)
    assert_close(-(logp_pi.exp() * fairl).sum(), kl(logp_beta, logp_pi), atol=1e-6, rtol=0,
                 msg="fairl_reward: −E_π[−h e^h] != KL(β‖π) at D*")
    assert_differs(expected_pg_grad(theta, TREE, fairl), grad(kl(logp_beta, logp_pi), theta),
                   "fairl_reward's docstring: its policy gradient is not ∇KL(β‖π), yet here it is")


def test_importance_weight_reward_policy_gradient_is_the_forward_kl_gradient():
    """On the tree world, through policy_gradient_loss: with r = e^h, h = log β − log π (D*), held fixed, the
    expected gradient of the loss is ∇KL(β ‖ π), forward, SFT's (not ∇KL(π ‖ β), AIRL's). Fails with the reward's
    sign flipped, or with r = h."""
    theta, expert = random_policy(TREE, 73, grad=True), random_policy(TREE, 74)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    g = expected_pg_grad(theta, TREE, obj.importance_weight_reward(logp_beta - logp_pi))
    assert_close(g, grad(kl(logp_beta, logp_pi), theta), "importance_weight_reward: E_π[∇PG loss] != ∇KL(β‖π)")
    assert_differs(g, grad(kl(logp_pi, logp_beta), theta), "test has no teeth: ∇KL(β‖π) == ∇KL(π‖β) here")


# The K-outcome toy: a softmax policy π = softmax(θ) over K outcomes, one response each, β fixed, exact sums.
K_TOY = 6


def toy_log_beta(seed):
    return F.log_softmax(torch.randn(K_TOY, generator=torch.Generator().manual_seed(seed)), -1)


def pg_direction(theta, reward_of_logit, log_beta, alpha=0.0):
    """Σ_y ∇_θ π(y) r(y): the expected ascent direction of a policy-gradient step, the reward held fixed. r is
    reward_of_logit(h) at the discriminator's optimum for this π, h = log β − log π, minus α log π(y) (an entropy
    bonus, held fixed too) when alpha > 0."""
    theta = theta.detach().requires_grad_(True)
    logpi = F.log_softmax(theta, -1)
    reward = reward_of_logit(logpi.detach().neg() + log_beta) - alpha * logpi.detach()
    return grad((logpi.exp() * reward).sum(), theta)


def forward_kl_descent(theta, log_beta):
    """−∇_θ KL(β ‖ π), forward, by autograd."""
    theta = theta.detach().requires_grad_(True)
    return -grad(kl(log_beta, F.log_softmax(theta, -1)), theta)


def test_importance_weight_reward_points_down_the_forward_kl_and_fairl_up_it():
    """For 200 random small perturbations π = softmax(log β + 10⁻³ ε) of β, K = 6 outcomes, the exact direction
    Σ_y ∇π(y) r(y) against −∇KL(β ‖ π): r = e^h has cosine +1 (exactly, and also at 20 policies far from β); FAIRL's
    r = −h e^h has cosine −1 to first order in the perturbation (fairl_reward's docstring: u log u ≈ u − 1 near β).
    Strict in sign, so either reward with its sign flipped fails."""
    log_beta = toy_log_beta(70)
    g = torch.Generator().manual_seed(71)
    cosines = {"importance_weight_reward": [], "fairl_reward": []}
    for i in range(220):
        scale = 1e-3 if i < 200 else 1.0
        theta = log_beta + scale * torch.randn(K_TOY, generator=g)
        d = forward_kl_descent(theta, log_beta)
        for name in cosines if i < 200 else ["importance_weight_reward"]:
            cosines[name].append(F.cosine_similarity(pg_direction(theta, getattr(obj, name), log_beta), d, 0))
    iw, fairl = torch.stack(cosines["importance_weight_reward"]), torch.stack(cosines["fairl_reward"])
    assert (iw > 1 - 1e-9).all(), \
        f"importance_weight_reward: cosine with −∇KL(β‖π) {iw.min().item():.9f}, should be +1 (Σ ∇π β/π = −∇KL)"
    assert (fairl < -0.99).all(), \
        f"fairl_reward near β: cosine with −∇KL(β‖π) up to {fairl.max().item():.6f}, should be ≈ −1"


def flow(theta, log_beta, reward_of_logit, steps, lr, normalised=False, alpha=0.0):
    """Policy-gradient ascent with the discriminator at D* for the current π before every step. Returns KL(β ‖ π)
    after each step (the first: before any) and the last θ."""
    kls = [kl(log_beta, F.log_softmax(theta, -1))]
    for _ in range(steps):
        d = pg_direction(theta, reward_of_logit, log_beta, alpha)
        theta = theta + lr * (d / d.norm() if normalised else d)
        kls.append(kl(log_beta, F.log_softmax(theta, -1)))
    return torch.stack(kls), theta


def test_beta_is_a_stable_fixed_point_of_the_importance_weight_reward_and_an_unstable_one_of_fairl():
    """The flows of both rewards on the K = 6 toy. e^h: plain steps from a random π lower KL(β ‖ π) at every step,
    from 0.6 to below 10⁻⁵. FAIRL: from a 10⁻³ perturbation of β, unit-length steps of 0.01 (its reward is unbounded
    below, so plain steps overshoot) raise KL(β ‖ π) at every step, from ~10⁻⁷ to over 0.5, and an outcome β gives
    0.36 ends with under a tenth of that: β is a fixed point, but unstable. With an entropy bonus −α log π, α = 1
    (SAC's), the direction at π = β is not 0 (β is no longer the fixed point) and the flow from near β still runs
    away. Fails with either reward's sign flipped."""
    log_beta = toy_log_beta(75)
    g = torch.Generator().manual_seed(76)
    kls, _ = flow(torch.randn(K_TOY, generator=g), log_beta, obj.importance_weight_reward, 300, 1.0)
    assert (kls.diff() < 0).all() and kls[-1] < 1e-5, \
        f"importance_weight_reward's flow: KL(β‖π) {kls[0].item():.4g} → {kls[-1].item():.4g}, not down at every step"
    near = log_beta + 1e-3 * torch.randn(K_TOY, generator=g)
    kls, theta = flow(near, log_beta, obj.fairl_reward, 300, 0.01, normalised=True)
    assert kls[0] < 1e-5 and (kls.diff() > 0).all() and kls[-1] > 0.5, \
        f"fairl_reward's flow from near β: KL(β‖π) {kls[0].item():.3g} → {kls[-1].item():.3g}, should grow every step"
    ratio = (F.log_softmax(theta, -1) - log_beta).exp()
    assert ratio.min() < 0.1, f"fairl_reward's flow: π/β ≥ {ratio.min().item():.3g} everywhere, no outcome emptied"
    assert pg_direction(log_beta, obj.fairl_reward, log_beta).abs().max() < 1e-15, "FAIRL: β is not a fixed point"
    assert pg_direction(log_beta, obj.fairl_reward, log_beta, alpha=1.0).abs().max() > 1e-2, \
        "FAIRL + entropy bonus: the direction at π = β should not vanish (β is not uniform)"
    kls, _ = flow(near, log_beta, obj.fairl_reward, 300, 0.01, normalised=True, alpha=1.0)
    assert kls[-1] > 0.5, f"FAIRL + entropy bonus (α = 1) from near β: KL(β‖π) {kls[-1].item():.3g}, expected a runaway"


def test_effective_sample_size_is_kish_formula_in_log_space():
    """(Σw)²/Σw² against the direct computation; its ends, n for equal weights (also at log-weights of ±800,
    where e^{log w} is 0 or inf in float64) and 1 for one dominant weight; a count, not a fraction; invariant to a
    constant shift; in float32 at log-weights of a hundred nats. Fails for the direct formula, the inverse ratio,
    or a fraction of n."""
    g = torch.Generator().manual_seed(77)
    lw = 2 * torch.randn(5, 16, generator=g)
    w = lw.exp()
    ess = obj.effective_sample_size(lw)
    assert ess.shape == (5,)
    assert_close(ess, w.sum(-1) ** 2 / (w ** 2).sum(-1), "effective_sample_size != (Σw)²/Σw²")
    assert ((ess > 1) & (ess < 16)).all(), "test has no teeth: unequal weights should give 1 < ESS < n"
    assert_close(obj.effective_sample_size(lw + 123.0), ess, "effective_sample_size: changed by a constant shift")
    for c in (0.0, -800.0, 800.0):
        assert_close(obj.effective_sample_size(torch.full((16,), c)), torch.tensor(16.0),
                     f"effective_sample_size of 16 equal weights (log w = {c}) != 16, the count")
    dominant = torch.tensor([0.0] + [-40.0] * 15)
    assert_close(obj.effective_sample_size(dominant), torch.tensor(1.0), atol=1e-12, rtol=0,
                 msg="effective_sample_size of one dominant weight != 1")
    lw32 = torch.tensor([100.0, 99.0, 98.0, 60.0], dtype=torch.float32)
    w64 = (lw32.double() - 100).exp()
    assert_close(obj.effective_sample_size(lw32).double(), w64.sum() ** 2 / (w64 ** 2).sum(), rtol=1e-5, atol=0,
                 msg="effective_sample_size in float32 at log-weights of 100 nats")


def test_importance_weights_variance_is_chi_squared_and_ess_its_inverse():
    """Exact, over four responses: E_π[e^h] = 1, Var_π(e^h) = χ²(β ‖ π) = Σ β²/π − 1, KL(β ‖ π) ≤ log(1 + χ²); on a
    batch of 100 samples holding each response in proportion to π, ESS/n = 1/(1 + χ²(β ‖ π))."""
    beta, pi = torch.tensor([0.5, 0.25, 0.15, 0.10]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    h = beta.log() - pi.log()
    w = obj.importance_weight_reward(h)
    chi2 = ((beta - pi) ** 2 / pi).sum()   # 1.9125
    assert_close((pi * w).sum(), torch.tensor(1.0), "importance_weight_reward: E_π[e^h] != 1 at D*")
    assert_close((pi * w ** 2).sum() - 1, chi2, "importance_weight_reward: Var_π(e^h) != χ²(β‖π)")
    assert kl(beta.log(), pi.log()) <= torch.log1p(chi2), "KL(β‖π) > log(1 + χ²(β‖π))"
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 20, 30, 40]))
    assert_close(obj.effective_sample_size(h[batch]) / 100, 1 / (1 + chi2),
                 "ESS/n of weights e^h on a batch in proportion to π != 1/(1 + χ²(β‖π))")


def per_token(table):
    """A tabular token-level discriminator: one logit per (state, token), laid out as (responses, positions)."""
    return table[TREE.state, TREE.action]


def test_token_discriminator_recovers_occupancy_log_ratio():
    theta, expert = random_policy(TREE, 16, grad=True), random_policy(TREE, 17)
    logp_pi, logp_beta = seq_logp(theta, TREE), seq_logp(expert, TREE)
    w_pi, w_beta = logp_pi.exp().detach(), logp_beta.exp()
    h = fit_logits(lambda t: obj.discriminator_loss(per_token(t), per_token(t), w_beta[:, None] * TREE.mask,
                                                    w_pi[:, None] * TREE.mask), (TREE.n_states, VOCAB))
    rho_pi = torch.einsum("y,ysa->sa", logp_pi.exp(), TREE.visits)   # occupancy ρ(s, a), by enumeration
    rho_beta = torch.einsum("y,ysa->sa", w_beta, TREE.visits)
    norm_pi, norm_beta = rho_pi / rho_pi.sum(), rho_beta / rho_beta.sum()   # ρ.sum() = E|y|
    assert_close(h, (norm_beta.log() - norm_pi.log()).detach(), atol=1e-6, rtol=0,
                 msg="discriminator_loss (token level): h*(s,a) != log ρ̄^β(s,a) − log ρ̄^π(s,a)")
    g = expected_pg_grad(theta, TREE, obj.rewards_to_go(obj.airl_reward(per_token(h)), TREE.mask))
    occupancy_kl = rho_pi.sum() * (norm_pi * (norm_pi.log() - norm_beta.log())).sum()
    assert_close(g, grad(occupancy_kl, theta), atol=1e-6, rtol=0,
                 msg="airl_reward (token level, reward-to-go): E_π[∇PG loss] != ∇[E_π|y|·KL(ρ̄^π‖ρ̄^β)]")
    assert_differs(g, grad(kl(logp_pi, logp_beta), theta),
                   "airl_reward's docstring: token-level AIRL should not follow the trajectory KL(π‖β)")


def fit_log_ratio_discriminator(logp_beta, logp_pi_tok, level, q_init):
    """The AIRL form with a tabular language model q_φ (one logit row per state), h = log q_φ − log π, fitted on
    the exact expected BCE of discriminator_loss (class weights = exact probabilities). Returns q_φ's table."""
    w_beta, w_pi = logp_beta.exp().detach(), sum_tokens(logp_pi_tok).exp().detach()
    q = q_init.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([q], max_iter=1000, tolerance_grad=1e-12, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        h = obj.log_ratio_logit(token_logp(q, TREE), logp_pi_tok, TREE.mask)
        if level == "seq":
            h = obj.sequence_logprob(h, TREE.mask)
            loss = obj.discriminator_loss(h, h, w_beta, w_pi)
        else:
            loss = obj.discriminator_loss(h, h, w_beta[:, None] * TREE.mask, w_pi[:, None] * TREE.mask)
        loss.backward()
        return loss
    opt.step(closure)
    return q.detach()


def sum_tokens(logp_tok):
    return obj.sequence_logprob(logp_tok, TREE.mask)


def test_log_ratio_discriminator_optimum_is_the_exact_log_ratio():
    """AIRL's form at sequence level: minimising the BCE over the language model q_φ alone reaches q_φ = β, so
    h = log β − log π on every response, though only q_φ's parameters move."""
    theta, expert = random_policy(TREE, 30), random_policy(TREE, 31)
    logp_pi_tok, logp_beta = token_logp(theta, TREE), seq_logp(expert, TREE)
    q = fit_log_ratio_discriminator(logp_beta, logp_pi_tok, "seq", q_init=theta)   # q_φ starts as a copy of π
    h = sum_tokens(obj.log_ratio_logit(token_logp(q, TREE), logp_pi_tok, TREE.mask))
    assert_close(h, logp_beta - seq_logp(theta, TREE), atol=1e-6, rtol=0,
                 msg="log_ratio_logit (sequence level): at the BCE optimum h != log β − log π")
    assert_close(seq_logp(q, TREE), logp_beta, atol=1e-6, rtol=0, msg="the optimal q_φ is not β")


def test_log_ratio_reward_model_optimum_is_the_classifier_optimum():
    """The reward model's form: q_φ starts as a copy of the negative class's model π_init (reward 0) and, trained
    to the BCE optimum on π_SFT samples (1) vs π_init samples (0), its reward log q_φ − log π_init equals
    classifier_optimum(log π_SFT, log π_init), the Init-SFT closed form."""
    init, sft = random_policy(TREE, 36), random_policy(TREE, 37)
    logp_init_tok, logp_sft = token_logp(init, TREE), seq_logp(sft, TREE)
    r0 = sum_tokens(obj.log_ratio_logit(token_logp(init, TREE), logp_init_tok, TREE.mask))
    assert torch.equal(r0, torch.zeros_like(r0))
    q = fit_log_ratio_discriminator(logp_sft, logp_init_tok, "seq", q_init=init)
    r = sum_tokens(obj.log_ratio_logit(token_logp(q, TREE), logp_init_tok, TREE.mask))
    assert_close(r, obj.classifier_optimum(logp_sft, seq_logp(init, TREE)), atol=1e-6, rtol=0,
                 msg="log-ratio reward model: at the BCE optimum r != log π_SFT − log π_init")
    assert_close(obj.classifier_optimum(torch.tensor([-1.0, -3.0]), torch.tensor([-2.5, -0.5])),
                 torch.tensor([1.5, -2.5]), "classifier_optimum: not log p_pos − log p_neg")


def test_log_ratio_logit_starts_at_zero_sums_over_tokens_and_trains_q_only():
    theta, q = random_policy(TREE, 32, grad=True), random_policy(TREE, 33, grad=True)
    pi_tok = token_logp(theta, TREE)
    h0 = obj.log_ratio_logit(token_logp(theta, TREE), pi_tok, TREE.mask)   # q_φ = π: D = ½ everywhere
    assert torch.equal(h0, torch.zeros_like(h0))
    h = obj.log_ratio_logit(token_logp(q, TREE), pi_tok, TREE.mask)
    assert_close(sum_tokens(h), seq_logp(q, TREE) - seq_logp(theta, TREE),   # brute-force sums per response
                 "log_ratio_logit: token logits summed != log q_φ(y) − log π(y)")
    assert torch.equal(h[~TREE.mask], torch.zeros_like(h[~TREE.mask]))
    h_seq = sum_tokens(h)
    loss = obj.discriminator_loss(h_seq[:5], h_seq[5:])
    g_q, g_pi = torch.autograd.grad(loss, [q, theta], allow_unused=True)
    assert g_q is not None and g_q.abs().sum() > 0, \
        f"the discriminator loss must train q_φ: expected a gradient on q_φ, got {show(g_q, 4)}"
    assert g_pi is None or torch.equal(g_pi, torch.zeros_like(g_pi)), \
        f"the discriminator loss must not move π: expected no gradient on π, got {show(g_pi, 4)}"


def test_token_level_log_ratio_discriminator_is_exact_only_without_a_state_ratio():
    """The token-level AIRL form, h(s, a) = log q_φ(a|s) − log π(a|s) with a normalised q_φ, cannot hold the
    state-visitation ratio P_β(s)/P_π(s) · E_π|y|/E_β|y| of the occupancy optimum: in general its fit is not β
    (the docstring's caveat). Where β and π reach every state alike, it is: let them differ only in the last
    decision (depth-2 states, max_len 3), after which every response has 3 tokens whatever is chosen."""
    theta, expert = random_policy(TREE, 34), random_policy(TREE, 35)
    q = fit_log_ratio_discriminator(seq_logp(expert, TREE), token_logp(theta, TREE), "tok", q_init=theta)
    assert_differs(F.log_softmax(q, -1), F.log_softmax(expert, -1),
                   "test has no teeth: the token-level fit equals β although the state visits differ")
    last = torch.tensor([len(s) == 2 for s in itertools.chain.from_iterable(
        itertools.product((0, 1), repeat=n) for n in range(3))])   # make_tree's state order
    assert last.sum() == 4
    alike = torch.where(last[:, None], expert, theta)
    q = fit_log_ratio_discriminator(seq_logp(alike, TREE), token_logp(theta, TREE), "tok", q_init=theta)
    assert_close(F.log_softmax(q, -1), F.log_softmax(alike, -1), atol=1e-5, rtol=0,
                 msg="token-level log-ratio D: with states reached alike, the optimal q_φ != β")


# -----------------------------------------------------------------------------
# reward models and extrapolation

def test_init_sft_classifier_recovers_closed_form_logratio():
    init, sft = random_policy(TREE, 18), random_policy(TREE, 19)
    logp_init, logp_sft = seq_logp(init, TREE), seq_logp(sft, TREE)
    h = fit_logits(lambda s: obj.classifier_reward_loss(s, s, logp_sft.exp(), logp_init.exp()), (N,))
    assert_close(h, logp_sft - logp_init, atol=1e-6, rtol=0,
                 msg="classifier_reward_loss: optimal Init-SFT logit != log π_SFT − log π_init")
    assert_close(obj.classifier_optimum(logp_sft, logp_init), logp_sft - logp_init,
                 "classifier_optimum(log π_SFT, log π_init) != log π_SFT − log π_init")


def softplus(z):
    return math.log1p(math.exp(z))


@pytest.mark.parametrize("name", ["discriminator_loss", "classifier_reward_loss"])
def test_discriminator_loss_without_masks_averages_each_class(name):
    loss = getattr(obj, name)   # at run time: the contracts fixture has checked it
    h_pos = torch.tensor([2.0, -1.0])                          # 2 demonstrations (or positives)
    h_neg = torch.tensor([0.5, -3.0, 1.0, 0.0, -0.5, 4.0])     # 6 policy samples (or negatives): 3× as many
    pos_terms = [softplus(-2.0), softplus(1.0)]                # −log D = softplus(−h), label 1
    neg_terms = [softplus(0.5), softplus(-3.0), softplus(1.0), softplus(0.0), softplus(-0.5), softplus(4.0)]
    expected = sum(pos_terms) / 2 + sum(neg_terms) / 6         # each class averaged on its own
    pooled = (sum(pos_terms) + sum(neg_terms)) / 8
    swapped = [softplus(2.0), softplus(-1.0)], [softplus(-h) for h in h_neg.tolist()]   # labels 0 and 1
    wrong = {"averages the two classes together (one mean of all 8 terms): average each class on its own": pooled,
             "sums the terms: average each class on its own": sum(pos_terms + neg_terms),
             "labels the classes the wrong way round: the first argument, labelled 1, pays −log D = softplus(−h); "
             "the second, labelled 0, pays −log(1 − D) = softplus(h)": sum(swapped[0]) / 2 + sum(swapped[1]) / 6,
             "labels the classes the wrong way round and averages them together": sum(swapped[0] + swapped[1]) / 8}
    assert min(abs(expected - v) for v in wrong.values()) > 1e-3, "test has no teeth: a wrong loss agrees here"
    got = loss(h_pos, h_neg).item()
    for cause, value in wrong.items():
        assert abs(got - value) > 1e-9, \
            f"{loss.__name__}, 2 demonstrations against 6 policy samples, {cause} (expected {expected:.6g}, " \
            f"got {got:.6g})"
    assert_close(loss(h_pos, h_neg), torch.tensor(expected),
                 f"{loss.__name__} without masks: != mean_β softplus(−h) + mean_π softplus(h), each class on its own")
    swapped_got = loss(h_neg, h_pos).item()
    assert abs(swapped_got - expected) > 1e-3, \
        f"{loss.__name__}: the first argument must be the class labelled 1 (with the arguments swapped, " \
        f"expected a value other than {expected:.6g}, got {swapped_got:.6g})"


def test_discriminator_loss_and_rewards_are_exact_at_extreme_logits_in_float32():
    """The pipeline's logits are float32, and a log-ratio discriminator's span tens of nats. Each class's term alone:
    the other class gets a logit whose term is 0 (softplus(−200) underflows to 0 exactly)."""
    far = torch.tensor([200.0], dtype=torch.float32)
    for h in (-100.0, -50.0, -20.0, 20.0, 50.0, 100.0):
        x = torch.tensor([h], dtype=torch.float32)
        for what, got, expected, how in (
                ("discriminator_loss of a demonstration", obj.discriminator_loss(x, -far), softplus(-h),
                 "−log D = softplus(−h)"),
                ("discriminator_loss of a policy sample", obj.discriminator_loss(far, x), softplus(h),
                 "−log(1 − D) = softplus(h)"),
                ("airl_reward", obj.airl_reward(x), h, "log D − log(1 − D), simplified by hand"),
                ("gail_reward", obj.gail_reward(x), softplus(h), "−log(1 − D) = softplus(h)")):
            got = got.detach().double().reshape(())
            assert torch.isfinite(got), \
                f"{what} is {got.item()} at h = {h:g} in float32: {how}; do not take the log of σ(h) " \
                f"(expected {expected:.6g}, got {got.item()})"
            assert abs(got.item() - expected) <= 1e-6 + 1e-5 * abs(expected), \
                f"{what} at h = {h:g} in float32: {got.item():.6g} != {expected:.6g} ({how}): expected " \
                f"{expected:.6g}, got {got.item():.6g}"


def test_airl_and_gail_rewards_are_constants():
    h = torch.tensor([0.5, -1.0], requires_grad=True)
    for reward in (obj.airl_reward, obj.gail_reward):
        assert not reward(h).requires_grad, f"{reward.__name__} carries a gradient back to the discriminator's " \
                                            f"logits: detach them (a reward is a constant for the policy's loss; " \
                                            f"expected a result that does not require grad, got one that does)"


@pytest.mark.parametrize("name", ["discriminator_loss", "classifier_reward_loss"])
def test_discriminator_fit_on_replicated_samples_recovers_log_ratio(name):
    """Equal class weights whatever the batch sizes: a tabular logit per response, fit without masks on 20
    "demonstrations", copies of each response in proportion to β, against 60 "samples" in proportion to π.
    Each class's mean is then exactly its expectation, so the optimum is log β − log π; a pooled mean or a sum
    would weigh the samples 3× and give log β − log π − log 3."""
    beta = torch.tensor([0.5, 0.25, 0.15, 0.10])
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ids_beta = torch.repeat_interleave(torch.arange(4), torch.tensor([10, 5, 3, 2]))     # 20 β
    ids_pi = torch.repeat_interleave(torch.arange(4), torch.tensor([6, 12, 18, 24]))     # 60 π
    h = fit_logits(lambda t: getattr(obj, name)(t[ids_beta], t[ids_pi]), (4,))
    assert_close(h, beta.log() - pi.log(), atol=1e-6, rtol=0,
                 msg=f"{name} without masks, 20 vs 60: optimal logit != log β − log π")


def test_bradley_terry_loss_hand_example():
    loss = obj.bradley_terry_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]))
    expected = (-math.log(0.5) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert_close(loss, torch.tensor(expected), "bradley_terry_loss != mean −log σ(s_c − s_r)")


def test_bradley_terry_loss_is_exact_at_extreme_score_gaps_in_float32():
    """The pipeline's scores are float32, and log-ratio reward models' scores span tens of nats."""
    for gap in (-150.0, -100.0, -50.0, -20.0, 20.0, 50.0, 100.0, 150.0):   # s_c − s_r
        chosen, rejected = torch.tensor([gap], dtype=torch.float32), torch.zeros(1, dtype=torch.float32)
        loss = obj.bradley_terry_loss(chosen, rejected)
        expected = softplus(-gap)   # −log σ(z) = log(1 + e^{−z}), in float64 here
        assert torch.isfinite(loss), \
            f"bradley_terry_loss is {loss.item()} at s_c − s_r = {gap:g} in float32: −log σ(z) = softplus(−z), " \
            f"not the log of a sigmoid that underflows (nor log(1 + exp(−z)), which overflows): expected " \
            f"{expected:.6g}, got {loss.item()}"
        assert abs(loss.item() - expected) <= 1e-6 + 1e-5 * expected, \
            f"bradley_terry_loss at s_c − s_r = {gap:g} in float32: {loss.item():.6g} " \
            f"!= softplus({-gap:g}) = {expected:.6g}: expected {expected:.6g}, got {loss.item():.6g}"


def test_best_of_n_distribution_by_enumeration_and_kl_bound():
    p = torch.tensor([0.1, 0.4, 0.2, 0.3])          # base policy over four responses
    reward = torch.tensor([0.3, -1.0, 2.0, 0.7])    # distinct: no ties
    n = 3
    draws = torch.tensor(list(itertools.product(range(4), repeat=n)))   # all 4^n draws of n candidates
    best = draws[torch.arange(len(draws)), obj.best_of_n(reward[draws])]
    p_bon = torch.zeros(4).index_add_(0, best, p[draws].prod(-1))
    order = reward.argsort()
    cdf = p[order].cumsum(0)
    closed = torch.empty(4)
    closed[order] = cdf ** n - torch.cat([torch.zeros(1), cdf[:-1]]) ** n   # P(best = y) = F(y)^n − F(y⁻)^n
    assert_close(p_bon, closed, "best_of_n: enumerated Best-of-N distribution != F(y)^n − F(y⁻)^n")
    exact = kl(p_bon.log(), p.log()).item()
    assert exact < obj.best_of_n_kl(n), \
        f"best_of_n_kl({n}) = {obj.best_of_n_kl(n)} should bound the exact KL, {exact:.6g}, of a base policy with " \
        f"atoms: expected more than {exact:.6g}, got {obj.best_of_n_kl(n):.6g}"


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_matches_enumeration_without_atoms(n):
    k = 10_000   # uniform over k responses with distinct rewards: no single one has appreciable mass
    cdf = torch.arange(k + 1) / k
    p_bon = cdf[1:] ** n - cdf[:-1] ** n
    exact = (p_bon * torch.log(p_bon * k)).sum().item()
    assert abs(exact - obj.best_of_n_kl(n)) < 1e-6, \
        f"best_of_n_kl({n}) = {obj.best_of_n_kl(n)}, enumeration gives {exact}: expected {exact:.6g}, " \
        f"got {obj.best_of_n_kl(n):.6g}"


# -----------------------------------------------------------------------------
# generalised Jensen–Shannon

G = torch.Generator().manual_seed(0)
LOGITS_P, LOGITS_Q = (torch.randn(2, 3, 5, generator=G, dtype=torch.float64) for _ in range(2))


def test_generalized_jsd_ends_equal_kl_div_with_the_right_argument_order():
    log_p, log_q = F.log_softmax(LOGITS_P, -1), F.log_softmax(LOGITS_Q, -1)
    # F.kl_div(input, target) computes KL(target ‖ input)
    kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    assert_differs(kl_pq, kl_qp, "test has no teeth: KL(p‖q) == KL(q‖p) here")
    for w in (0.0, 1.0):
        want = (kl_pq if w == 0 else kl_qp).flatten()[0].item()
        try:
            end = obj.generalized_jsd(LOGITS_P, LOGITS_Q, w)
        except (ValueError, ZeroDivisionError) as e:   # math.log(0), a division by w(1 − w)
            assert False, f"generalized_jsd(w={w:g}) raises {type(e).__name__} ({e}): the ends are explicit cases " \
                          f"(expected {'KL(p‖q)' if w == 0 else 'KL(q‖p)'}, {want:.4g} at position 0, got " \
                          f"{type(e).__name__})"
        assert torch.isfinite(end).all() and (end.abs() > 1e-6).all(), \
            f"generalized_jsd(w={w:g}) is {end.flatten()[0].item():.3g}, the formula's value there: the ends " \
            f"are explicit cases, KL(p‖q) at w = 0 and KL(q‖p) at w = 1 (expected {want:.4g} at position 0, " \
            f"got {end.flatten()[0].item():.4g})"
    assert_close(obj.generalized_jsd(LOGITS_P, LOGITS_Q, 0.0), kl_pq, "generalized_jsd(w=0) != KL(p‖q)")
    assert_close(obj.generalized_jsd(LOGITS_P, LOGITS_Q, 1.0), kl_qp, "generalized_jsd(w=1) != KL(q‖p)")


def test_generalized_jsd_zero_on_identical_inputs_and_symmetric():
    for w in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert_close(obj.generalized_jsd(LOGITS_P, LOGITS_P, w), torch.zeros(2, 3),
                     f"generalized_jsd(p, p, {w}) != 0")
    log_p, log_q = F.log_softmax(LOGITS_P, -1), F.log_softmax(LOGITS_Q, -1)
    log_m = torch.log((log_p.exp() + log_q.exp()) / 2)
    js_pq = (F.kl_div(log_m, log_p, log_target=True, reduction="none").sum(-1)
             + F.kl_div(log_m, log_q, log_target=True, reduction="none").sum(-1)) / 2
    assert_close(obj.generalized_jsd(LOGITS_P, LOGITS_Q, 0.5), js_pq, "generalized_jsd(w=0.5) != JS(p, q)")
    assert_close(obj.generalized_jsd(LOGITS_Q, LOGITS_P, 0.5), js_pq, "generalized_jsd(w=0.5) not symmetric")
    assert_close(obj.generalized_jsd(LOGITS_P, LOGITS_Q, 0.3), obj.generalized_jsd(LOGITS_Q, LOGITS_P, 0.7),
                 "generalized_jsd: JSD_w(p‖q) != JSD_{1−w}(q‖p)")


def test_generalized_jsd_is_exact_where_probabilities_underflow_in_float32():
    """Tokens that p and q both make nearly impossible (e^{−200} is 0 in float32): the log-probabilities are exact,
    the probabilities are 0, and log m must come from the log-probabilities. The expected values: the same
    formulas on float64 probabilities, which do not underflow here."""
    logits_p = torch.tensor([[0.0, 1.0, -200.0, -300.0]], dtype=torch.float32)
    logits_q = torch.tensor([[1.0, 0.0, -250.0, -200.0]], dtype=torch.float32)
    p, q = (F.softmax(x.double(), -1) for x in (logits_p, logits_q))
    for w in (0.0, 0.3, 0.5, 1.0):
        m = w * p + (1 - w) * q
        kl_pm, kl_qm = (p * (p / m).log()).sum(), (q * (q / m).log()).sum()
        expected = {0.0: (p * (p / q).log()).sum(), 1.0: (q * (q / p).log()).sum()}.get(
            w, w * kl_pm + (1 - w) * kl_qm)
        got = obj.generalized_jsd(logits_p, logits_q, w)
        assert torch.isfinite(got).all(), \
            f"generalized_jsd(w={w:g}) is {got.item()} where probabilities underflow in float32 (logits 200 " \
            f"apart): work with log-probabilities, and get log m by logsumexp, not by log of a sum of exps " \
            f"(expected {expected.item():.6g}, got {got.item()})"
        assert_close(got.double().reshape(()), expected, atol=1e-6, rtol=1e-4,
                     msg=f"generalized_jsd(w={w:g}) in float32, logits 200 apart: != its float64 value")

def test_generalized_jsd_interior_tends_to_zero_not_to_the_end_kls():
    eps = 1e-5
    near_0, near_1 = (obj.generalized_jsd(LOGITS_P, LOGITS_Q, b) for b in (eps, 1 - eps))
    for near, w, end in ((near_0, eps, 0.0), (near_1, 1 - eps, 1.0)):
        bound = 1e-3 * obj.generalized_jsd(LOGITS_P, LOGITS_Q, end)
        assert (near < bound).all(), f"JSD_w should → 0 as w → {end:g}: expected generalized_jsd(w={w:g}) below " \
                                     f"{show(bound, 3)}, got {show(near, 3)}"
    scale = eps * (1 - eps)
    assert_close(near_0 / scale, obj.generalized_jsd(LOGITS_P, LOGITS_Q, 0.0), rtol=1e-3, atol=0,
                 msg="generalized_jsd's docstring: JSD_w/(w(1−w)) should → KL(p‖q) as w → 0")
    assert_close(near_1 / scale, obj.generalized_jsd(LOGITS_P, LOGITS_Q, 1.0), rtol=1e-3, atol=0,
                 msg="generalized_jsd's docstring: JSD_w/(w(1−w)) should → KL(q‖p) as w → 1")


# -----------------------------------------------------------------------------
# reward extrapolation, continued: the plausibility floor, the reward family, the extrapolated policy

def test_plausible_floor_is_relative_to_each_prompts_best_candidate():
    """eligible ⇔ log π_SFT(y|x) ≥ max_j log π_SFT(y_j|x) − τ, per prompt (row), boundary included: at τ = 0
    the most likely candidates, ties included, are exactly on it. Elsewhere no candidate is within a tenth of a
    nat of a floor, so that the same constraint written on probabilities instead of log-probabilities, whose
    float rounding differs on a boundary, passes too. Fails for a floor from the batch's overall best (row 1 would lose every candidate),
    a strict inequality (τ = 0 would keep none), a floor above the best (+ τ)."""
    logp = torch.tensor([[-1.0, -2.0, -3.5, -1.0],          # two candidates tie for the most likely
                         [-10.0, -11.75, -12.25, -30.0]])   # every candidate below row 0's floor
    T, F_ = True, False
    cases = {2.0: [[T, T, F_, T], [T, T, F_, F_]],          # row 1: −11.75 ≥ −10 − 2 > −12.25
             0.0: [[T, F_, F_, T], [T, F_, F_, F_]],        # only the most likely, ties included
             math.inf: [[T, T, T, T], [T, T, T, T]]}        # every candidate
    wrong = {   # what the wrong floors give: τ → {cause: eligible}
        2.0: {"a floor from the whole batch's best, not each prompt's own": [[T, T, F_, T], [F_, F_, F_, F_]],
              "a floor above the best (+ τ)": [[F_, F_, F_, F_], [F_, F_, F_, F_]]},
        0.0: {"a strict inequality: the best candidate must be eligible, ties included":
              [[F_, F_, F_, F_], [F_, F_, F_, F_]],
              "a floor from the whole batch's best, not each prompt's own": [[T, F_, F_, T], [F_, F_, F_, F_]]}}
    for tau, expected in cases.items():
        got = obj.plausible(logp, tau).tolist()
        cause = next((c for c, v in wrong.get(tau, {}).items() if v == got),
                     "eligible ⇔ log π_SFT(y|x) ≥ max_j log π_SFT(y_j|x) − τ, per prompt")
        assert got == expected, f"plausible(τ = {tau}) on logp = {logp.tolist()}: {cause}: expected {expected}, " \
                                f"got {got}"
    try:
        got = obj.plausible(logp, -1.0)
    except ValueError:
        pass
    else:
        raise AssertionError(f"plausible(τ = −1) must raise ValueError: a floor above the best candidate keeps "
                             f"none (expected ValueError, got {got.tolist()})")


def test_best_of_n_plausible_hand_examples():
    """The highest reward among the eligible, the first on ties. Row 0 is the log-ratio reward's trap: the
    highest reward (9) belongs to a candidate π_SFT rates 4 nats below its best; the floor (τ = 2) changes the
    pick, from it to the best plausible one, and two eligible candidates tie on reward (2.0: the first wins).
    τ = 0 keeps the two most likely candidates, tied on logp and on reward. Fails for no masking, the last of
    ties, or a floor from the batch's overall best."""
    logp = torch.tensor([[-1.0, -5.0, -1.5, -2.0, -1.0],
                         [-4.0, -4.0, -9.0, -4.5, -3.0]])
    rewards = torch.tensor([[0.5, 9.0, 2.0, 2.0, 0.5],
                            [1.0, 1.0, 7.0, 0.0, -1.0]])
    wrong = {   # what wrong picks give: τ → {picks: cause}
        2.0: {(1, 2): "the highest reward of all candidates: mask the ineligible ones",
              (3, 1): "the last of tied rewards: the first wins, like best_of_n",
              (2, 4): "a floor from the whole batch's best, not each prompt's own"},
        0.0: {(1, 2): "the highest reward of all candidates: mask the ineligible ones",
              (4, 4): "the last of tied rewards: the first wins, like best_of_n"}}
    for tau, expected in {2.0: [2, 0], 0.0: [0, 4], math.inf: [1, 2]}.items():
        got = obj.best_of_n_plausible(rewards, logp, tau).tolist()
        cause = wrong.get(tau, {}).get(tuple(got), "the highest reward among the eligible, the first on ties")
        assert got == expected, f"best_of_n_plausible(τ = {tau}) on rewards = {rewards.tolist()}, logp = " \
                                f"{logp.tolist()}: {cause}: expected {expected}, got {got}"
    assert obj.best_of_n(rewards).tolist() == [1, 2]
    # rewards of −inf: the pick is still an eligible candidate (index 0 is not: 8 nats below the best)
    got = obj.best_of_n_plausible(torch.tensor([[-math.inf, -math.inf, -math.inf]]),
                                  torch.tensor([[-9.0, -1.0, -1.5]]), 1.0).tolist()
    assert got == [1], f"best_of_n_plausible: picked an ineligible candidate when every eligible reward is −inf " \
                       f"(logp [-9, -1, -1.5], τ = 1: expected [1], got {got})"


def test_best_of_n_plausible_without_a_floor_is_best_of_n():
    g = torch.Generator().manual_seed(50)
    rewards = torch.randint(0, 3, (200, 6), generator=g).double()   # many ties in reward
    logp = -torch.rand(200, 6, generator=g) * 20
    unconstrained, plain = obj.best_of_n_plausible(rewards, logp, math.inf), obj.best_of_n(rewards)
    differ = (unconstrained != plain).sum().item()
    assert differ == 0, f"best_of_n_plausible(τ = inf) != best_of_n (first on ties): expected the same pick in " \
                        f"all 200 rows, got {differ} rows that differ"
    assert not torch.equal(obj.best_of_n_plausible(rewards, logp, 1.0), plain), \
        "best_of_n_plausible(τ = 1) ignores the floor: expected other picks than best_of_n's in some of 200 rows, " \
        "got best_of_n's in all"


def test_log_ratio_family_ends():
    init, sft = random_policy(TREE, 42), random_policy(TREE, 43)
    logp_sft, logp_init = seq_logp(sft, TREE), seq_logp(init, TREE)
    assert_close(obj.log_ratio_family(logp_sft, logp_init, 1.0), obj.classifier_optimum(logp_sft, logp_init),
                 "log_ratio_family(γ = 1) != classifier_optimum, the Init-SFT optimum")
    assert_close(obj.log_ratio_family(logp_sft, logp_init, 0.0), logp_sft, "log_ratio_family(γ = 0) != log π_SFT")
    assert_close(obj.log_ratio_family(logp_sft, logp_init, 0.3), logp_sft - 0.3 * logp_init,
                 "log_ratio_family(γ) != log p_pos − γ log p_neg")


LOGITS_SFT, LOGITS_INIT = (torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                           for s in (51, 52))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0, -0.5, -1.0])
def test_extrapolated_logits_is_the_normalised_geometric_extrapolation(alpha):
    """exp(extrapolated_logits) = π_SFT^{1+α} π_init^{−α} / Σ_a (the same), computed here in probabilities.
    Fails with the weights swapped, the sign of α flipped, no final normalisation, or an arithmetic mixture."""
    p_sft, p_init = F.softmax(LOGITS_SFT, -1), F.softmax(LOGITS_INIT, -1)
    q = p_sft ** (1 + alpha) * p_init ** (-alpha)
    q = q / q.sum(-1, keepdim=True)
    assert_close(obj.extrapolated_logits(LOGITS_SFT, LOGITS_INIT, alpha).exp(), q,
                 f"extrapolated_logits(α = {alpha}): != π_SFT^(1+α) π_init^(−α), normalised")
    if alpha == 0:
        assert_close(obj.extrapolated_logits(LOGITS_SFT, LOGITS_INIT, 0.0), F.log_softmax(LOGITS_SFT, -1),
                     "extrapolated_logits(α = 0) != log π_SFT", atol=1e-14, rtol=0)
    if alpha == -1:
        assert_close(q, p_init, "α = −1 should be π_init")
    if alpha > 0:   # (at α = −½ the swap is the same geometric mean)
        assert_differs(q, p_sft, "test has no teeth: π_α == π_SFT")
        swapped = p_init ** (1 + alpha) * p_sft ** (-alpha)
        assert_differs(q, swapped / swapped.sum(-1, keepdim=True), "test has no teeth: swapped weights agree")


def test_extrapolated_policy_is_the_per_token_analogue_of_the_kl_regularised_optimum():
    """π_α (normalised at every state) against π*(y|x) ∝ π_SFT(y|x)^{1+α} π_init(y|x)^{−α} (normalised once over
    whole responses), the optimum of J(π) = E_π[log π_SFT − log π_init] − λ KL(π ‖ π_SFT) at λ = 1/α, where
    J(π*) = λ log Z. They differ on the tree, J(π_α) < J(π*); they agree at the tree's last decision, where no
    continuation follows (π*'s look-ahead is empty), and in a world of one-token responses."""
    alpha = 1.5
    lam = 1 / alpha
    for tree in (TREE, make_tree(1)):
        sft, init = random_policy(tree, 44), random_policy(tree, 45)
        logp_sft, logp_init = seq_logp(sft, tree), seq_logp(init, tree)
        table = obj.extrapolated_logits(sft, init, alpha)              # log π_α(a|s), one row per state
        logp_alpha = seq_logp(table, tree)
        unnormalised = (1 + alpha) * logp_sft - alpha * logp_init
        logp_star = unnormalised - torch.logsumexp(unnormalised, 0)
        assert_close(logp_alpha.exp().sum(), torch.tensor(1.0), "π_α is not a distribution over responses")

        def J(logp):
            return (logp.exp() * (logp_sft - logp_init)).sum() - lam * kl(logp, logp_sft)
        assert_close(J(logp_star), lam * torch.logsumexp(unnormalised, 0),
                     "π* ∝ π_SFT^{1+1/λ} π_init^{−1/λ}: J(π*) != λ log Z")
        if tree is TREE:
            assert_differs(logp_alpha, logp_star, "extrapolated_logits' docstring: π_α == π* on a tree")
            assert J(logp_alpha) < J(logp_star) - 1e-6, "π_α does better than the optimum π*"
            P = torch.einsum("y,ysa->sa", logp_star.exp(), tree.visits)   # P*(reach s, take a)
            last = slice(3, 7)                                            # make_tree's depth-2 states
            assert_close((P / P.sum(-1, keepdim=True))[last], table[last].exp(),
                         "at the last decision π*(·|s) != π_α(·|s)")
        else:
            assert_close(logp_alpha, logp_star, "one-token responses: π_α != π*")


# -----------------------------------------------------------------------------
# DPO and SPIN

def bradley_terry_pairs(mu, reward):
    """P(chosen = a, rejected = b | x) when two responses are drawn from mu(·|x) independently and labelled by
    Bradley–Terry on reward: (y_1, y_2) ~ mu ⊗ mu, y_1 chosen with probability σ(r(y_1) − r(y_2)), so
    P(a, b) = 2 mu(a) mu(b) σ(r(a) − r(b)) (on the diagonal, mu(a)²: either label). (M, K) → (M, K, K)."""
    return 2 * mu[:, :, None] * mu[:, None, :] * torch.sigmoid(reward[:, :, None] - reward[:, None, :])


def population_dpo_loss(logpi, logref, pairs, lam):
    """Σ_x Σ_{a,b} P(x) P(a, b | x) · (dpo_loss of the single pair a ≻ b), x uniform over the M prompts: every
    pair enumerated, each scored by dpo_loss on a batch of one. logpi, logref (M, K), pairs (M, K, K)."""
    M, K = logpi.shape
    total = 0.0
    for x, a, b in itertools.product(range(M), range(K), range(K)):
        one = lambda t, y: t[x, y:y + 1]
        total = total + pairs[x, a, b] / M * obj.dpo_loss(one(logpi, a), one(logpi, b), one(logref, a),
                                                          one(logref, b), lam)
    return total


def test_dpo_population_optimum_is_the_kl_regularised_optimum():
    """Preference pairs labelled by Bradley–Terry on a known reward r, every pair enumerated with its probability;
    a tabular softmax policy (a free logit per prompt and response) fitted to the population DPO loss by gradient
    descent (L-BFGS, float64) ends at π* ∝ π_ref · exp(r/λ), the optimum of max_π E_π[r] − λ KL(π ‖ π_ref), and its
    implicit reward λ log π/π_ref is r up to a constant per prompt. The pairs are drawn from a third distribution
    mu: the optimum does not depend on it. Fails with chosen and rejected swapped (π ∝ π_ref · exp(−r/λ)), the
    reference not subtracted (π ∝ exp(r/λ)), or λ outside the sigmoid, −λ log σ(Δ) (π ∝ π_ref · exp(r))."""
    M, K, lam = 2, 4, 0.5
    g = torch.Generator().manual_seed(60)
    reward = torch.randn(M, K, generator=g)
    logref = F.log_softmax(torch.randn(M, K, generator=g), -1)
    mu = F.softmax(torch.randn(M, K, generator=g), -1)
    pairs = bradley_terry_pairs(mu, reward)
    assert_close(pairs.sum((1, 2)), torch.ones(M), "the enumerated pairs' probabilities do not sum to 1")
    theta = fit_logits(lambda t: population_dpo_loss(F.log_softmax(t, -1), logref, pairs, lam), (M, K))
    logpi = F.log_softmax(theta, -1)
    optimum = F.log_softmax(logref + reward / lam, -1)   # π* ∝ π_ref exp(r/λ), normalised per prompt
    assert_close(logpi, optimum, atol=1e-6, rtol=0,
                 msg="dpo_loss: the population minimiser != π_ref · exp(r/λ) / Z(x)")
    implicit = lam * (logpi - logref)
    assert_close(implicit - implicit[:, :1], reward - reward[:, :1], atol=1e-6, rtol=0,
                 msg="dpo_loss: at the optimum the implicit reward λ log π/π_ref != r + c(x)")
    for name, wrong in (("π_ref exp(−r/λ)", logref - reward / lam), ("exp(r/λ)", reward / lam),
                        ("π_ref exp(r)", logref + reward)):
        assert_differs(optimum, F.log_softmax(wrong, -1), f"test has no teeth: π* == {name} here")


def test_dpo_gradient_raises_chosen_lowers_rejected_and_leaves_the_reference():
    """∂L/∂log π(y_w) = −λ σ(−margin)/B < 0 and ∂L/∂log π(y_l) = +λ σ(−margin)/B: a descent step raises the
    chosen and lowers the rejected, here also through a tabular softmax policy; the reference's log-probs get no
    gradient (detached). Fails with chosen and rejected swapped, or the reference not detached."""
    lam = 0.7
    chosen = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -4.0, -2.5], requires_grad=True)
    ref_chosen = torch.tensor([-2.5, -1.5, -1.0], requires_grad=True)
    ref_rejected = torch.tensor([-2.0, -3.0, -3.5], requires_grad=True)
    loss = obj.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, lam)
    margins = [lam * ((c - rc) - (r - rr)) for c, r, rc, rr in
               zip(*(t.tolist() for t in (chosen, rejected, ref_chosen, ref_rejected)))]   # −0.35, 1.05, −1.4
    assert_close(loss, torch.tensor(sum(softplus(-m) for m in margins) / 3),
                 "dpo_loss != mean of −log σ(λ[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)])")
    g_c, g_r, g_rc, g_rr = torch.autograd.grad(loss, [chosen, rejected, ref_chosen, ref_rejected], allow_unused=True)
    weight = torch.tensor([lam / (1 + math.exp(m)) / 3 for m in margins])   # λ σ(−margin) / B
    assert_close(g_c, -weight, "dpo_loss: ∂L/∂log π(y_w) != −λ σ(−margin)/B (a descent step must raise y_w)")
    assert_close(g_r, weight, "dpo_loss: ∂L/∂log π(y_l) != +λ σ(−margin)/B (a descent step must lower y_l)")
    for g_ref in (g_rc, g_rr):
        assert g_ref is None or torch.equal(g_ref, torch.zeros_like(g_ref)), \
            "dpo_loss: π_ref's log-probs get a gradient"
    # through a tabular policy over 4 responses: one descent step on the pair y_w = 0 ≻ y_l = 2
    theta = torch.randn(4, generator=torch.Generator().manual_seed(61), requires_grad=True)
    logref = F.log_softmax(torch.randn(4, generator=torch.Generator().manual_seed(62)), -1)
    before = F.log_softmax(theta, -1)
    step = grad(obj.dpo_loss(before[[0]], before[[2]], logref[[0]], logref[[2]], lam), theta)
    after = F.log_softmax(theta - 0.1 * step, -1)
    assert after[0] > before[0] and after[2] < before[2], "a DPO descent step should raise log π(y_w), lower log π(y_l)"


def test_dpo_loss_is_finite_at_extreme_margins_in_float32():
    """softplus(−margin), not −log σ(margin): in float32 σ(−150) = 0 already, and log 0 = −inf. Margins
    λ × (±2e4, ±300, 0) = ±1e4, ±150, 0, one pair at a time: the loss max(−m, 0) + log(1 + e^{−|m|}) and the
    gradient −λ σ(−m) with respect to log π(y_w), finite. Fails for −log(sigmoid(m)) and log(1 + exp(−m))."""
    lam = 0.5
    for delta in (2e4, -2e4, 300.0, -300.0, 0.0):
        chosen = torch.tensor([delta], dtype=torch.float32, requires_grad=True)
        zero = torch.zeros(1, dtype=torch.float32)
        loss = obj.dpo_loss(chosen, zero, zero, zero, lam)
        (g,) = torch.autograd.grad(loss, chosen)
        m = lam * delta
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(g).all(), \
            f"dpo_loss at margin {m} in float32: loss {loss.item()}, gradient {g.item()}"
        expected = max(-m, 0.0) + math.log1p(math.exp(-abs(m)))
        assert_close(loss, torch.tensor(expected, dtype=torch.float32), f"dpo_loss at margin {m}", rtol=1e-6, atol=1e-6)
        assert_close(g, torch.tensor([-lam / (1 + math.exp(min(m, 700)))], dtype=torch.float32),
                     f"dpo_loss's gradient at margin {m}", rtol=1e-6, atol=1e-6)


def spin_population_loss(theta, logp_data, logp_prev, lam):
    """SPIN's population loss on TREE: chosen y_w ~ β (a demonstration), rejected y_l ~ π_t (the previous
    iterate's own sample), independent, so P(y_w = a, y_l = b) = β(a) π_t(b); reference π_t. Every ordered pair
    enumerated, each scored by dpo_loss on a batch of one. logp_data, logp_prev: log β(y), log π_t(y), constants."""
    return spin_pairs_loss(seq_logp(theta, TREE), logp_data, logp_prev, lam)


def spin_pairs_loss(logpi, logp_data, logp_prev, lam):
    """Σ_{a,b} β(a) π_t(b) · (dpo_loss of the single pair a ≻ b, reference π_t), over every ordered pair of the
    enumerated responses: logpi, logp_data, logp_prev are log π, log β, log π_t of each response."""
    w = logp_data.exp()[:, None] * logp_prev.exp()[None, :]
    total = 0.0
    for a, b in itertools.product(range(len(logpi)), repeat=2):
        total = total + w[a, b] * obj.dpo_loss(logpi[a:a + 1], logpi[b:b + 1], logp_prev[a:a + 1],
                                               logp_prev[b:b + 1], lam)
    return total


def test_spin_fixed_point_is_the_data_distribution():
    """At the start of a SPIN iteration, π_θ = π_ref = π_t, the expected gradient is (λ/2) ∇KL(β ‖ π_θ) (dpo_loss's
    docstring): zero at π_t = β, where chosen and rejected are identically distributed; at π_t ≠ β nonzero, and a
    small descent step lowers KL(β ‖ π). Fails with chosen and rejected swapped (the step raises KL(β ‖ π)) or the
    reference not subtracted (nonzero gradient at π = β)."""
    lam = 0.8
    expert = random_policy(TREE, 63)
    logp_beta = seq_logp(expert, TREE)
    theta = expert.clone().requires_grad_(True)
    g = grad(spin_population_loss(theta, logp_beta, logp_beta, lam), theta)
    assert_close(g, torch.zeros_like(g), "SPIN: at π = π_ref = β the expected gradient != 0")
    theta = random_policy(TREE, 64, grad=True)
    logp_prev = seq_logp(theta, TREE).detach()
    g = grad(spin_population_loss(theta, logp_beta, logp_prev, lam), theta)
    kl_beta = lambda t: kl(logp_beta, seq_logp(t, TREE))   # KL(β ‖ π), forward
    assert_close(g, lam / 2 * grad(kl_beta(theta), theta), "SPIN: at π = π_ref ≠ β, E[∇L] != (λ/2) ∇KL(β ‖ π)")
    assert g.abs().max() > 1e-2, "test has no teeth: SPIN's gradient vanishes at π ≠ β"
    assert kl_beta(theta.detach() - 0.5 * g) < kl_beta(theta.detach()) - 1e-4, \
        "SPIN: a descent step at π = π_ref ≠ β should bring π closer to β (lower KL(β ‖ π))"


def centred(log_p):
    """A log-probability vector up to its additive constant: minus its mean over the outcomes."""
    return log_p - log_p.mean(-1, keepdim=True)


@pytest.mark.parametrize("lam", [0.1, 0.4, 0.75, 1.0, 2.0])
def test_spin_iteration_minimiser_is_the_closed_form(lam):
    """One SPIN iteration trained to convergence on a K = 6 toy: a free logit per outcome, fitted by L-BFGS (float64)
    from π_t to the exact population loss (every ordered pair (y, y'), weight β(y) π_t(y'), each scored by dpo_loss,
    reference π_t), ends at spin_iterate_optimum, π_t (β/π_t)^{1/λ} normalised, to 10⁻⁶. At its start, π = π_t,
    the gradient is (λ/2)∇KL(β ‖ π), SFT's. Fails with the exponent λ instead of 1/λ, or β and π_t swapped."""
    log_beta, log_pi_t = toy_log_beta(80), toy_log_beta(81)
    loss = lambda t: spin_pairs_loss(F.log_softmax(log_pi_t + t, -1), log_beta, log_pi_t, lam)
    fitted = F.log_softmax(log_pi_t + fit_logits(loss, (K_TOY,)), -1)
    optimum = obj.spin_iterate_optimum(log_pi_t, log_beta, lam)
    assert_close(optimum.exp().sum(), torch.tensor(1.0), "spin_iterate_optimum: not normalised")
    assert_close(fitted, optimum, atol=1e-6, rtol=0,
                 msg=f"SPIN at λ = {lam}: the population loss's minimiser != π_t (β/π_t)^(1/λ), normalised")
    for name, wrong, same_at in (("π_t (β/π_t)^λ", log_pi_t + lam * (log_beta - log_pi_t), 1.0),
                                 ("β (π_t/β)^(1/λ)", log_beta + (log_pi_t - log_beta) / lam, 2.0)):   # √(β π_t)
        if lam != same_at:
            assert_differs(optimum, F.log_softmax(wrong, -1), f"test has no teeth: {name} == the optimum here")
    theta = log_pi_t.clone().requires_grad_(True)
    g = grad(spin_pairs_loss(F.log_softmax(theta, -1), log_beta, log_pi_t, lam), theta)
    assert_close(g, lam / 2 * grad(kl(log_beta, F.log_softmax(theta, -1)), theta),
                 "SPIN at π = π_t: the population gradient != (λ/2) ∇KL(β ‖ π)")
    assert g.abs().max() > 1e-3, "test has no teeth: SPIN's gradient vanishes at π_t here"


@pytest.mark.parametrize("lam, factor", [(0.1, -9.0), (0.4, -1.5), (0.6, -2 / 3), (1.0, 0.0), (2.0, 0.5)])
def test_spin_iteration_multiplies_the_centred_log_error_by_one_minus_one_over_lambda(lam, factor):
    """ē_{t+1} = (1 − 1/λ) ē_t, ē = log π − log β centred over the outcomes, for 20 random (β, π_t) on the K = 6 toy;
    the factors written out by hand. Fails with the exponent λ instead of 1/λ, or without the normalisation."""
    g = torch.Generator().manual_seed(82)
    log_beta = F.log_softmax(torch.randn(20, K_TOY, generator=g), -1)
    log_pi_t = F.log_softmax(torch.randn(20, K_TOY, generator=g), -1)
    after = obj.spin_iterate_optimum(log_pi_t, log_beta, lam)
    assert_close(after.exp().sum(-1), torch.ones(20), "spin_iterate_optimum: not normalised over the last dim")
    assert_close(centred(after - log_beta), factor * centred(log_pi_t - log_beta), atol=1e-12, rtol=1e-10,
                 msg=f"SPIN at λ = {lam}: the centred log-error is not multiplied by 1 − 1/λ = {factor:g}")


def test_spin_iterations_diverge_below_one_half_and_converge_above():
    """Iterations trained to convergence (spin_iterate_optimum), from π_0 = softmax(log β + 0.05 ε), K = 6: at
    λ = 0.1 KL(β ‖ π_t) grows at every iteration (the error ×(−9)); at λ = ½, π_2 = π_0; at λ = 0.75 it falls at
    every iteration; at λ = 1, π_1 = β. Fails with the exponent λ instead of 1/λ."""
    log_beta = toy_log_beta(83)
    log_pi_0 = F.log_softmax(log_beta + 0.05 * torch.randn(K_TOY, generator=torch.Generator().manual_seed(84)), -1)

    def forward_kls(lam, iterations):
        log_pi, kls = log_pi_0, [kl(log_beta, log_pi_0)]
        for _ in range(iterations):
            log_pi = obj.spin_iterate_optimum(log_pi, log_beta, lam)
            kls.append(kl(log_beta, log_pi))
        return torch.stack(kls), log_pi

    kls, _ = forward_kls(0.1, 3)
    assert (kls.diff() > 0).all() and kls[-1] > 1, f"SPIN at λ = 0.1: KL(β ‖ π_t) = {kls.tolist()}, should grow"
    _, log_pi_2 = forward_kls(0.5, 2)
    assert_close(log_pi_2, log_pi_0, "SPIN at λ = ½: π_2 != π_0 (a cycle of period 2)")
    kls, _ = forward_kls(0.75, 4)
    assert (kls.diff() < 0).all() and kls[-1] < 1e-3 * kls[0], \
        f"SPIN at λ = 0.75: KL(β ‖ π_t) = {kls.tolist()}, should fall at every iteration"
    kls, log_pi_1 = forward_kls(1.0, 1)
    assert_close(log_pi_1, log_beta, "SPIN at λ = 1: π_1 != β")
