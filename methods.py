"""
methods.py: the one table of afd-mini's methods: what each policy and reward model is, how evaluate measures it,
which effects metrics.py judges on it, and its label and plot style in the report.

Adding a method is one entry here (its label, style and what it is) and one in afd_mini.STAGES (how it is
computed, the options it reads, the files it writes). A policy trained by adversarial imitation with another
reward transform needs nothing else: evaluate measures it, the report draws it, and metrics.effect_conditions
judges it by its divergence (mode-seeking for reverse KL and JS).
"""
from dataclasses import dataclass

import objectives as obj


@dataclass(frozen=True)
class Method:
    """What every entry has: its name (in metrics.json), kind, label (in figures and tables) and plot style."""
    name: str
    kind: str
    label: str
    style: object


@dataclass(frozen=True)
class Policy(Method):
    """A policy the pipeline evaluates.
    kind:  expert (the world's demonstrator, sampled exactly), pretrain (π_init), sft (π_SFT, forward KL),
           adversarial (reverse KL, JS or forward KL with a learned discriminator), oracle (the same loop with the
           exact discriminator logit log β − log π), dpo (DPO's loss on pairs: dpo on the gold preference pairs, spin
           on (demonstration, own sample) pairs), rm_rl (policy optimisation on a reward model), extrapolated
           (π_α ∝ π_SFT^{1+α} π_init^{−α} token by token, no training: sampling.Extrapolated), control (the
           policy-optimisation loop with a reward that knows nothing of β: pg_control, pg_frozen).
    label: its name in figures and tables; {disc} becomes the discriminator form of the run (--disc).
    style: (colour, marker), the same in every figure.
    level, form, transform (adversarial and oracle): the discriminator's level (seq: one logit per response,
           tok: one per token), its form (airl | scalar; None = --disc) and the reward of its logit h;
    divergence: the one that reward minimises, at the discriminator's optimum;
    alpha (extrapolated): how far past π_SFT."""
    level: str = None
    form: str = None
    transform: object = None
    divergence: str = None
    alpha: float = None

    @property
    def mode_seeking(self):   # the reverse-KL family (Jensen–Shannon included): expected to seek modes
        return self.divergence in ("reverse KL", "JS")

    @property
    def checkpoint(self):     # the stage whose <stage>.pt holds this policy (None: the world's, or made from two)
        return {"pretrain": "pretrain", "expert": None, "extrapolated": None}.get(self.kind, self.name)


# Reward extrapolation's grids, fixed before any run and kept after seeds 0-4 (α = 0.5 had the highest gold reward
# there), frozen before seeds 5-9 ran (docs/RESULTS.md).
GAMMAS = (0.25, 0.5, 0.75)        # r_γ = log π_SFT − γ log π_init, from the likelihood (γ = 0) to Init-SFT's optimum (1)
ALPHAS = (0.25, 0.5, 1.0, 2.0)    # π_α ∝ π_SFT^{1+α} π_init^{−α}: how far past π_SFT
ALPHA_JUDGED = 0.5                # the α at which "extrapolation without a reward model" is judged

POLICIES = [
    Policy("expert", "expert", "expert π_β", ("black", "*")),
    Policy("init", "pretrain", "π_init", ("0.55", "o")),
    Policy("sft", "sft", "π_SFT (forward KL)", ("C0", "o")),
    Policy("rkl_seq", "adversarial", "reverse KL, {disc} sequence D", ("C3", "s"),
           level="seq", transform=obj.airl_reward, divergence="reverse KL"),
    Policy("rkl_tok", "adversarial", "reverse KL, {disc} token D", ("C1", "^"),
           level="tok", transform=obj.airl_reward, divergence="reverse KL"),
    Policy("js", "adversarial", "Jensen–Shannon (GAIL), {disc} D", ("C4", "D"),
           level="seq", transform=obj.gail_reward, divergence="JS"),
    Policy("rkl_seq_scalar", "adversarial", "reverse KL, scalar-head sequence D", ("C6", "s"),   # the ablation
           level="seq", form="scalar", transform=obj.airl_reward, divergence="reverse KL"),
    Policy("rkl_oracle", "oracle", "reverse KL, exact reward", ("C5", "v"), transform=obj.airl_reward,
           divergence="reverse KL"),
    Policy("js_oracle", "oracle", "Jensen–Shannon, exact D*", ("C9", "D"), transform=obj.gail_reward,
           divergence="JS"),
    # the controls: the same policy-optimisation loop with a reward that carries no information about β
    Policy("pg_control", "control", "control: the loop, D of π_SFT vs π (no demonstrations)", ("0.3", "x")),
    Policy("pg_frozen", "control", "control: the loop, D frozen at π_SFT", ("0.6", "x")),
    # the methods AfD is compared with: FAIRL (forward KL by a discriminator), DPO, SPIN
    Policy("fkl_fairl", "adversarial", "forward KL (FAIRL), {disc} sequence D", ("C8", "h"),
           level="seq", transform=obj.fairl_reward, divergence="forward KL"),
    # FAIRL's twins: its exact reward, and the importance weight e^h (β/π at the optimum), learned and exact
    Policy("fkl_iw", "adversarial", "forward KL, importance weight e^h, {disc} sequence D", ("brown", "h"),
           level="seq", transform=obj.importance_weight_reward, divergence="forward KL"),
    Policy("fkl_oracle", "oracle", "forward KL (FAIRL), exact reward", ("C8", "v"), transform=obj.fairl_reward,
           divergence="forward KL"),
    Policy("fkl_iw_oracle", "oracle", "forward KL, exact importance weight β/π", ("brown", "v"),
           transform=obj.importance_weight_reward, divergence="forward KL"),
    Policy("dpo", "dpo", "DPO on the preference pairs", ("C7", "p")),
    Policy("spin", "dpo", "SPIN (DPO on demonstration vs own sample)", ("olive", "p")),
    # SPIN where it has something to learn: from an under-trained π_SFT (--sft_short_steps)
    Policy("sft_short", "sft", "π_SFT under-trained (fewer steps)", ("C0", "x")),
    Policy("spin_short", "dpo", "SPIN from the under-trained π_SFT", ("goldenrod", "x")),
    Policy("rl_init_sft", "rm_rl", "RL on Init-SFT reward", ("C2", "P")),
    *[Policy(f"extrapolated_{a:g}", "extrapolated", f"π_α, α = {a:g} (extrapolated, no training)",
             (f"{0.75 - 0.15 * i:.2f}", ">"), alpha=a) for i, a in enumerate(ALPHAS)],
]
POLICY = {p.name: p for p in POLICIES}
ADVERSARIAL = [p.name for p in POLICIES if p.kind == "adversarial"]   # the ones with a learned discriminator
MODE_SEEKING = [p.name for p in POLICIES if p.mode_seeking]


@dataclass(frozen=True)
class RewardModel(Method):
    """A reward that ranks π_SFT's samples in Best-of-N.
    kind:    learned (a classifier trained on samples: positives 1, negatives 0), optimum (exact: the optimum
             log p_pos − γ log p_neg of a learned one's objective at γ = 1, which only our world can compute, and
             its relatives at other γ; γ = 0 is the likelihood log p_pos alone), derived (learned: log q_φ −
             γ log π_neg, read from the learned reward model `base`'s q_φ), gold (the world's, exact).
    pos, neg: the classes: sft, init (samples of π_SFT, π_init), demos, chosen / rejected (preference pairs);
             for an optimum, whose log-probabilities: sft, init, demos (= the expert β).
    gamma:   the weight of log p_neg (optimum, derived).
    base:    the checkpoint q_φ starts from and the log-ratio's reference (learned).
    form:    airl (log q_φ − log π_neg) | scalar (a score head); None = --disc.
    optimum: the name of its exact optimum's entry, if any.
    control: also trained in the control world (the demonstrator without its signature).
    pairwise: Bradley–Terry on pairs instead of a classifier.
    style: keyword arguments of matplotlib's plot."""
    pos: str = None
    neg: str = None
    base: str = None
    form: str = None
    optimum: str = None
    control: bool = False
    pairwise: bool = False
    gamma: float = 1.0

    @property
    def exact(self):          # computed from the world's or the models' exact log-probabilities, not learned
        return self.kind in ("optimum", "gold")


# The learned ones train in this order (each draws its minibatches from the stage's one random stream).
REWARD_MODELS = [
    RewardModel("init_sft", "learned", "Init-SFT", dict(color="C0", lw=2.5, marker="o"),
                pos="sft", neg="init", base="pretrain", optimum="init_sft_optimum", control=True),
    RewardModel("init_sft_optimum", "optimum", "Init-SFT optimum (log π_SFT − log π_init)",
                dict(color="C0", lw=1.2, marker="o", ls="--", mfc="white"), pos="sft", neg="init"),
    RewardModel("init_demo", "learned", "Init-Demo", dict(color="C1", lw=1.5, marker="s"),
                pos="demos", neg="init", base="pretrain", optimum="init_demo_optimum", control=True),
    RewardModel("init_demo_optimum", "optimum", "Init-Demo optimum (log β − log π_init)",
                dict(color="C1", lw=1.2, marker="s", ls="--", mfc="white"), pos="demos", neg="init"),
    RewardModel("sft_demo", "learned", "SFT-Demo", dict(color="C3", lw=1.5, marker="^"),
                pos="demos", neg="sft", base="sft", optimum="sft_demo_optimum", control=True),
    RewardModel("sft_demo_optimum", "optimum", "SFT-Demo optimum (log β − log π_SFT)",
                dict(color="C3", lw=1.2, marker="^", ls="--", mfc="white"), pos="demos", neg="sft"),
    RewardModel("pairwise_bt", "learned", "preference (Bradley–Terry)", dict(color="C2", lw=1.5, marker="D"),
                pos="chosen", neg="rejected", base="pretrain", pairwise=True),
    RewardModel("init_sft_scalar", "learned", "Init-SFT, scalar head", dict(color="C9", lw=1.2, marker="o", ls="-."),
                pos="sft", neg="init", base="pretrain", form="scalar", optimum="init_sft_optimum"),   # the ablation
    # baselines the papers lack: the likelihood alone, and the family between it and Init-SFT's optimum
    RewardModel("sft_likelihood", "optimum", "log π_SFT alone (the most likely of N)",
                dict(color="C5", lw=1.5, marker="v"), pos="sft", gamma=0.0),
    *[RewardModel(f"init_sft_optimum_g{g:g}", "optimum", f"log π_SFT − {g:g} log π_init",
                  dict(color="C0", lw=1.0, marker=".", ls=":", alpha=0.4 + 0.6 * g), pos="sft", neg="init", gamma=g)
      for g in GAMMAS],
    *[RewardModel(f"init_sft_g{g:g}", "derived", f"log q_φ − {g:g} log π_init (Init-SFT's q_φ)",
                  dict(color="C9", lw=1.0, marker=".", ls="-", alpha=0.4 + 0.6 * g), base="init_sft", gamma=g)
      for g in GAMMAS],
    RewardModel("gold", "gold", "gold reward (oracle)", dict(color="black", lw=1.2, marker=".", ls=":")),
]
REWARD_MODEL = {r.name: r for r in REWARD_MODELS}
LEARNED = [r.name for r in REWARD_MODELS if r.kind == "learned"]
CONTROL_LEARNED = [r.name for r in REWARD_MODELS if r.kind == "learned" and r.control]
OPTIMA = [r.name for r in REWARD_MODELS if r.kind == "optimum"]
DERIVED = [r.name for r in REWARD_MODELS if r.kind == "derived"]
PAPER_REWARDS = [r.name for r in REWARD_MODELS if r.kind in ("learned", "optimum", "gold") and r.gamma == 1]
LEARNED_VS_OPTIMUM = {r.name: r.optimum for r in REWARD_MODELS if r.optimum}
