"""
cli.py: the command line of afd_mini.py, kept apart from the pipeline (as nanoGPT keeps its configurator).

    defaults (afd_mini.Config) → a preset → --config=FILE (JSON) → --key=value

Every value is type-checked, every key known, and every constraint between options checked before any work
starts, so that bad input is one line on stderr (exit status 2) and never a traceback minutes later or a
half-written output directory. Parsing and checking only: running, caching and the output directory's guards
are runner.py's.
"""
import dataclasses
import difflib
import itertools
import json
import math
import os

from data import World, load_tokenizer
from model import get_device


class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2, nothing written (runner.attempt)."""


def parse_value(key, text, default):
    kind = type(default)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--{key}={text}: expected a boolean (true/false)")
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"--{key}={text}: expected {kind.__name__}, e.g. --{key}={default}") from None


def parse_args(argv, config_class, presets, usage, stages):
    """argv → a validated config_class instance. usage: the text --help prints above the options; stages: the
    pipeline's stage names (for --redo and --stop_after)."""
    fields = {f.name: f.default for f in dataclasses.fields(config_class)}
    given, config_file = {}, None
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage + "\nOptions (default):")
            for k, v in fields.items():
                print(f"  --{k}={v}")
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: options look like --key=value (see --help)")
        key, eq, text = arg[2:].partition("=")
        if key == "config":
            config_file = text
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields) + ["config"], n=3)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see --help"
            raise UsageError(f"unknown option --{key}{hint}")
        if not eq and type(fields[key]) is not bool:
            raise UsageError(f"--{key} needs a value: --{key}=...")
        given[key] = parse_value(key, text if eq else "true", fields[key])   # a bare --flag means true
    preset = "quick" if given.get("quick") else given.get("preset", "default")
    if preset not in presets:
        raise UsageError(f"--preset={preset}: allowed presets are {', '.join(presets)}")
    values = {**fields, **presets[preset], "preset": preset}
    if config_file is not None:
        try:
            with open(config_file, encoding="utf-8") as f:
                from_file = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"--config={config_file}: cannot read a JSON object from it ({e})") from None
        if not isinstance(from_file, dict):
            raise UsageError(f"--config={config_file}: expected a JSON object of options, got {type(from_file).__name__}")
        for key, value in from_file.items():
            if key not in fields:
                raise UsageError(f"unknown option {key!r} in {config_file}; see --help")
            values[key] = parse_value(key, str(value), fields[key])
    values.update(given)
    cfg = config_class(**values)
    validate(cfg, stages)
    for _, point in sweep_points(cfg):   # every point of a sweep, before any work
        validate(dataclasses.replace(cfg, sweep="", **point), stages)
    return cfg


def sweep_points(cfg):
    """--sweep=KNOB=v1,v2,... (or KNOB=v1,v2/KNOB2=w1,w2: a grid) → [(folder, {knob: value})], every combination
    in order. A knob must be an option that changes results (not in cfg.RUN_ONLY); values are parsed like
    --KNOB=value."""
    if not cfg.sweep:
        return []
    fields = {f.name: f.default for f in dataclasses.fields(cfg)}
    axes = []
    for part in cfg.sweep.split("/"):
        knob, eq, text = part.partition("=")
        if knob not in fields:
            close = difflib.get_close_matches(knob, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see --help"
            raise UsageError(f"--sweep={cfg.sweep}: {knob!r} is not an option{hint}")
        if knob in cfg.RUN_ONLY | {"seed", "sweep", "device", "control"}:
            raise UsageError(f"--sweep={cfg.sweep}: --{knob} changes no result (or chooses what runs, like --seeds); "
                             "sweep an option that changes results")
        values = [parse_value(knob, v, fields[knob]) for v in text.split(",") if v] if eq else []
        if len(values) < 2 or len(set(values)) < len(values) or knob in dict(axes):
            raise UsageError(f"--sweep={cfg.sweep}: give {knob} two or more different values once, like "
                             f"--sweep={knob}={fields[knob]},...")
        axes.append((knob, values))
    if len(axes) > 2:
        raise UsageError(f"--sweep={cfg.sweep}: at most two knobs (a grid)")
    return [("+".join(f"{k}={v}" for k, v in zip(dict(axes), combo)), dict(zip(dict(axes), combo)))
            for combo in itertools.product(*(values for _, values in axes))]


# Counts no experiment needs, refused before a MemoryError or an overflow deep inside a stage.
MAX_SEEDS = 10_000        # docs/RESULTS.md's study is 10 seeds; each seed is a whole run of every stage
MAX_SEED = 2**32 - 1      # numpy's classic seed range; torch's generators take seed × 100003 (sampling_seed), < 2^63
MAX_SAMPLES = 1 << 22     # samples one stage draws: 32 times the gpu preset's largest batch (Best-of-N's 512 × 256)
MEMORY_IF_UNKNOWN = 16 * 2**30   # bytes, where the system does not say how much it has (Windows)

ZERO_ALLOWED = {"seed", "kl_coef", "rm_kl_coef", "disc_warmup", "disc_nll", "flat_tol", "bon_plausibility", "dpo_warmup"}   # may be 0; the world checks its own knobs (q, ...)


def validate(cfg, stages):
    """Every option on its own, then every constraint between options; the first violation is raised.
    cfg.WORLD: the world's knobs, which data.WorldConfig checks itself."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):   # inf and nan parse as floats; no option takes them
            raise UsageError(f"--{f.name}={v}: must be a finite number")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or f.name in cfg.WORLD:
            continue
        if v < 0 or (v == 0 and f.name not in ZERO_ALLOWED):
            raise UsageError(f"--{f.name}={v}: must be {'≥ 0' if f.name in ZERO_ALLOWED else 'positive'}")
    if cfg.seeds > MAX_SEEDS:
        raise UsageError(f"--seeds={cfg.seeds}: allowed are 1 to {MAX_SEEDS} (each seed is a whole run; "
                         "docs/RESULTS.md's study is 10)")
    if cfg.seed + cfg.seeds - 1 > MAX_SEED:
        raise UsageError(f"--seed={cfg.seed}: the seeds run from --seed to --seed + --seeds - 1, at most {MAX_SEED}")
    choices = {"disc": ("airl", "scalar"), "device": ("auto", "cpu", "cuda", "mps"),
               "dtype": ("auto", "bfloat16", "float32")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UsageError(f"--{key}={getattr(cfg, key)}: allowed values are {', '.join(allowed)}")
    for name in filter(None, cfg.redo.split(",")):
        if name not in [*stages, "all"]:
            raise UsageError(f"--redo={cfg.redo}: {name!r} is not a stage; stages are all, {', '.join(stages)}")
    if cfg.stop_after and cfg.stop_after not in stages:
        raise UsageError(f"--stop_after={cfg.stop_after}: stages are {', '.join(stages)}")
    # between options: what would otherwise fail minutes later, deep inside a stage
    at_least = [("group_size", 2, "the leave-one-out baseline needs two samples of each prompt"),
                ("rm_batch", 2, "a reward-model batch holds rm_batch/2 positives and as many negatives"),
                ("n_demo", 16, "an eighth of the demonstrations is held out to watch the reward models"),
                ("n_pref", 16, "an eighth of the preference pairs is held out likewise")]
    for key, low, why in at_least:
        if getattr(cfg, key) < low:
            raise UsageError(f"--{key}={getattr(cfg, key)}: must be at least {low} ({why})")
    if cfg.bon_max_n & (cfg.bon_max_n - 1):
        raise UsageError(f"--bon_max_n={cfg.bon_max_n}: must be a power of two (N = 1, 2, 4, ...)")
    if cfg.bon_prompts > cfg.n_eval:
        raise UsageError(f"--bon_prompts={cfg.bon_prompts}: at most --n_eval={cfg.n_eval} (Best-of-N runs on the "
                         "held-out prompts)")
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"--n_head={cfg.n_head} does not divide --n_embd={cfg.n_embd}: each head gets an equal "
                         "share of the embedding")
    try:
        world = World(cfg.world_config(), load_tokenizer())   # some limits need the world (the longest response)
    except ValueError as e:   # name the option the user typed, not the world's field
        raise UsageError(str(e).replace("WorldConfig.max_response_tokens", "--max_new_tokens")
                         .replace("WorldConfig.", "--")) from None
    check_batches(cfg, world.vocab_size)
    try:
        get_device(cfg.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not cfg.out_dir:   # "" is no directory: os.makedirs("") fails, and the cache would fill the current one
        raise UsageError("--out_dir=: empty; name a directory, e.g. --out_dir=out")
    if not cfg.cache:
        raise UsageError("--cache=: empty; allowed are auto, off or a directory")
    for key in ["out_dir"] + ["cache"] * (cfg.cache not in ("auto", "off")):
        file = next((p for p in parents(getattr(cfg, key)) if os.path.exists(p) and not os.path.isdir(p)), None)
        if file is not None:
            raise UsageError(f"--{key}={getattr(cfg, key)}: {file} is a file, not a directory; name a directory"
                             + ("; allowed are auto, off or a directory" if key == "cache" else ""))


def memory_bytes():
    """This machine's memory in bytes (MEMORY_IF_UNKNOWN where the system does not say)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return MEMORY_IF_UNKNOWN
    return pages * size if pages > 0 and size > 0 else MEMORY_IF_UNKNOWN


def check_batches(cfg, vocab_size):
    """Refuse the batches of samples that cannot be drawn: more than MAX_SAMPLES in one stage, whatever the machine,
    or a policy-gradient batch whose logits alone outgrow this machine's memory. That batch is sampled and scored
    whole; the others are sampled and scored in chunks of 512, so that only their token lists grow with them."""
    batches = [(("rl_prompts", "group_size"), "per policy-gradient batch"), (("n_eval", "eval_samples"),
               "per policy in evaluate"), (("bon_prompts", "bon_max_n"), "in best_of_n"),
               (("rm_samples",), "of π_init and of π_SFT each in reward_models")]
    for keys, where in batches:
        n = math.prod(getattr(cfg, k) for k in keys)
        if n > MAX_SAMPLES:
            raise UsageError(f"{' × '.join(f'--{k}={getattr(cfg, k)}' for k in keys)}: {n} samples {where}; at "
                             f"most {MAX_SAMPLES} at once (32 times the gpu preset's most, best_of_n's 512 × 256)")
    n = cfg.rl_prompts * cfg.group_size
    need, have = n * cfg.max_new_tokens * vocab_size * 4, memory_bytes()   # float32 logits of full-length responses
    if need > have:
        raise UsageError(f"--rl_prompts={cfg.rl_prompts} × --group_size={cfg.group_size}: the logits of a policy-"
                         f"gradient batch of {n} responses of up to --max_new_tokens={cfg.max_new_tokens} tokens need "
                         f"about {need / 2**30:.1f} GiB (× {vocab_size} tokens of vocabulary × 4 bytes), more than "
                         f"this machine's {have / 2**30:.1f} GiB of memory")


def parents(path):
    """path, its parent, its parent's parent, ... (relative paths stop at the current directory)."""
    while path and path not in (os.sep, "."):
        yield path
        path = os.path.dirname(path.rstrip(os.sep))
