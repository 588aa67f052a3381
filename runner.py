"""
runner.py: how afd-mini runs its stages, kept apart from what the stages compute (as nanochat keeps its
checkpointing and logging out of its stage scripts).

The pipeline (afd_mini.py) hands main its stage table, its Config (RunOptions and its own options), its presets
and its Run class. main parses the command line (cli.py), locks the output directories, and for every seed of
every --sweep point (this process's share of them under torchrun) makes a Run and hands run_seed the stages;
then it writes each run's metrics.json (metrics.py) and the report (report.py). For each stage in order, run_seed
  - skips it when its <stage>.json in the run's folder holds the same fingerprint (a resumed run),
  - else copies it from the stage cache when another run computed it from the same inputs,
  - else runs it (the stage writes its files, then <stage>.json is written last and atomically) and caches it,
and returns every stage's results. A stage's fingerprint covers exactly what its result depends on: the seed,
the options it reads, the fingerprints of the stages it consumes, how the numbers are computed (torch's version,
the device, the thread count) and the code: code_files states which. Also here: the output directory's guards (a
run of other options is refused, one run at a time), progress lines, and turning every failure into one line (a
stage that meets a student copy's blanked exercise names it: exercises.not_written).

This module knows nothing of the papers' maths. Of a Run it asks only .cfg, .seed, .device, .dir,
.begin(stage_name), .world_seconds and .control_world.
"""
import ast
import contextlib
import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from typing import ClassVar

import torch
from tqdm import tqdm

import cli
import console
import exercises
import metrics
import report
from cli import UsageError
from model import MPS_UNTESTED


class StageError(Exception):
    """A stage cannot go on: one line naming the stage or file and what to do, exit status 1."""


class UnreadableFile(Exception):
    """A file a stage reads does not load; run_seed names the stage that rewrites it."""

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path, self.reason = path, reason


@dataclasses.dataclass(frozen=True)
class Stage:
    """One entry of the pipeline's stage table.
    fn(run) → its results (a JSON-able dict); it saves its own files (models) in run.dir.
    reads: the options its result depends on; consumes: the stages whose files or results it uses;
    writes: its files in its run's folder, besides <name>.json; world: which Run it works in, "main" or "control"
    (the Run's .control_world; such stages run only with --control)."""
    name: str
    fn: object
    reads: tuple
    consumes: tuple
    writes: tuple
    world: str = "main"


@dataclasses.dataclass
class RunOptions:
    """The options of a run that are not the pipeline's: where it writes, which seeds, on what, which stages run.
    The pipeline's Config adds its own (afd_mini.Config: the world, the model, each method)."""
    out_dir: str = "out"
    seed: int = 0
    seeds: int = 1                # run seeds seed, seed+1, ..., and report mean ± std over them
    device: str = "auto"          # auto | cpu | cuda | mps
    dtype: str = "auto"           # auto (bf16 autocast on CUDA, float32 elsewhere) | bfloat16 | float32
    preset: str = "default"       # default | quick | gpu (the pipeline's PRESETS)
    quick: bool = False           # shorthand for --preset=quick
    redo: str = ""                # comma-separated stages to recompute (and every stage after), or "all"
    control: bool = True          # also run the control world (no signature) for the reward-model ablation
    stop_after: str = ""          # stop after this stage (the rerun resumes from there)
    progress: bool = True         # progress bars on a terminal, a few plain lines per stage elsewhere
    cache: str = "auto"           # finished stages shared across output directories: auto | off | a directory
    clear_cache: bool = False     # empty the cache first
    sweep: str = ""               # KNOB=v1,v2,... (or KNOB=v1,v2/KNOB2=w1,w2): every value × every seed, in out_dir/KNOB=v
    study: str = ""               # one of the pipeline's studies (regimes, smallest): its points × every seed, in out_dir/<point>

    # Options that change no number: a run with other values of these can resume the same output directory.
    # (The device and the dtype do change numbers: the device enters every fingerprint (numerics), the dtype is
    # an option every stage reads; --control chooses which stages run.)
    RUN_ONLY: ClassVar[set] = {"out_dir", "seeds", "redo", "stop_after", "progress", "quick", "preset", "cache",
                               "clear_cache", "sweep", "study"}


@dataclasses.dataclass(frozen=True)
class Study:
    """A set of runs the pipeline defines, run by --study=NAME as a sweep is: every point × every seed.
    points: [(folder, {option: value})], each moved from the command's options; knobs: {knob: [folder, ...]}, the
    points along each knob in order; stages: the stages each runs (a subset of the pipeline's, in order);
    summary(results, seed): one seed's numbers (its metrics.json). report.write_study writes the study's outputs."""
    points: tuple
    knobs: dict
    stages: tuple
    summary: object


STUDIES = {}   # the pipeline's studies, by name (main sets them)


def result_config(cfg):
    """The options that change results, as each seed's config.json records them."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in cfg.RUN_ONLY | {"device", "seed"}}


def seed_dir(out_dir, seed):
    return os.path.join(out_dir, f"seed_{seed}")


def write_json(path, obj):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)   # atomic: an interrupted write never leaves half a file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)      # nor does a failed one (a full disk)


# -----------------------------------------------------------------------------------------------------------
# Fingerprints: what a stage's result depends on

def numerics(device):
    """How the numbers are computed: another thread count can move an adversarial result by nats."""
    return [torch.__version__, device.type, torch.get_num_threads()]


def stage_key(stage, run, keys, always_reads):
    """What stage's result depends on apart from the code: the seed, the options it reads (always_reads: those
    every stage reads, the world's), the keys of the stages it consumes (keys: of the stages before it), the
    numerics."""
    inputs = {"stage": stage.name, "seed": run.seed,
              "options": {k: getattr(run.cfg, k) for k in [*always_reads, *stage.reads]},
              "upstream": {s: keys[s] for s in stage.consumes}, "numerics": numerics(run.device)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def code_files(entry):
    """The files whose code computes the stages' results: the pipeline's file `entry` and every module of its
    folder that it imports, directly or through another one, but for this module and what only this module
    imports. The rule: a stage's result is computed by the pipeline's code, and the pipeline hands its stages to
    the runner, so the runner's side (running, caching and resuming stages, the command line, metrics.json, the
    report and its figures, the exercises' pointers) is never followed from the import of the runner. Read from
    the import statements, not listed by hand, so that a new module cannot be forgotten; with the data files of
    the packages among them (the tokenizer's ranks)."""
    root = os.path.dirname(os.path.abspath(entry))
    runner = os.path.splitext(os.path.basename(__file__))[0]   # this module's name: the import not followed
    seen, todo = set(), [os.path.abspath(entry)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if os.path.basename(path) == "__init__.py":   # a package: its data files too
            folder = os.path.dirname(path)
            seen.update(os.path.join(folder, f) for f in os.listdir(folder)
                        if os.path.isfile(os.path.join(folder, f)) and not f.endswith((".py", ".pyc")))
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:   # a.b: a/__init__.py, then a/b.py or a/b/__init__.py
                parts = name.split(".")
                if parts[0] == runner:
                    continue
                for k in range(1, len(parts) + 1):
                    base = os.path.join(root, *parts[:k])
                    todo += [p for p in (base + ".py", os.path.join(base, "__init__.py")) if os.path.isfile(p)]
    return sorted(seen)


@functools.cache
def code_version(entry):
    """A hash of code_files(entry): a stage computed by other code is never reused."""
    root = os.path.dirname(os.path.abspath(entry))
    h = hashlib.sha256()
    for path in code_files(entry):
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, root).encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def fingerprint(key, code):
    """A stage's fingerprint: its key and the code version. Equal fingerprints, equal results."""
    return hashlib.sha256(f"{key} {code}".encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------------------------------------
# The stage cache: finished stages shared between output directories

def cache_root(cache):
    """--cache: a directory, else (auto) $AFD_MINI_CACHE, else $XDG_CACHE_HOME/afd-mini (~/.cache/afd-mini);
    None for off."""
    if cache == "off":
        return None
    if cache != "auto":
        return cache
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
            with open(path, encoding="utf-8") as f:
                json.load(f)
        else:
            torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def restore(run, stage, key, fp, root, log):
    """Copy a cached result of this key into the run's folder, if there is one with this fingerprint whose files
    all load. Returns the directory it was first computed in, or None."""
    entry = os.path.join(root, key) if root else None
    if entry is None or not os.path.isdir(entry):
        return None
    files = [*stage.writes, stage.name + ".json"]   # the stage's json last: it marks the stage finished
    try:
        with open(os.path.join(entry, "entry.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = None
    if meta is None or not all(readable(os.path.join(entry, f)) for f in files):
        log(f"seed {run.seed} · {stage.name}: cache entry {entry} is corrupt, ignored")
        return None
    if meta.get("fingerprint") != fp:
        log(f"seed {run.seed} · {stage.name}: cache entry {entry} is from another code version, ignored")
        return None
    for f in files:
        target = os.path.join(run.dir, f)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(entry, f), target + ".tmp")
        os.replace(target + ".tmp", target)
    return meta["origin"]


UNWRITABLE = set()   # cache folders a stage could not be copied into: said once, then not tried again this run


def store(run, stage, key, fp, root, log):
    """Copy a finished stage into the cache (best effort: a cache that cannot be written is one notice, the first
    time, and no more tries this run; a cache that can still be read still gives what it holds)."""
    if root is None or root in UNWRITABLE:
        return
    entry, tmp = os.path.join(root, key), os.path.join(root, f"{key}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for f in [*stage.writes, stage.name + ".json"]:
            shutil.copyfile(os.path.join(run.dir, f), os.path.join(tmp, f))
        write_json(os.path.join(tmp, "entry.json"), {"stage": stage.name, "fingerprint": fp, "origin": run.dir})
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        UNWRITABLE.add(root)
        log(f"cache {root} is not writable ({e}); finished stages are not cached this run")


# -----------------------------------------------------------------------------------------------------------
# A full disk

FULL = 1 << 20   # bytes: a disk with less room left than this is full, for a write that just failed


def disk_full(error, directory):
    """Whether error is a write in directory that failed for want of room: an OSError ENOSPC (EDQUOT: a full quota),
    or a RuntimeError while the disk has no room left. torch.save raises the latter instead of ENOSPC, in words of
    its own ("unexpected pos ...", "basic_ios::clear: iostream error", "file write failed"): the disk is asked."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(error, RuntimeError):
        return False
    try:
        return shutil.disk_usage(directory).free < FULL
    except OSError:
        return False


@contextlib.contextmanager
def room(directory, what=""):
    """The body writes in directory: a full disk there is one line naming it (StageError, exit status 1), with the
    temporary files of the writes it interrupted (<file>.tmp in directory) removed, so that nothing is left
    half-written and the same command, rerun once there is room, resumes. what: the work, for the line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not disk_full(e, directory):
            raise
        for tmp in glob.glob(os.path.join(glob.escape(directory), "*.tmp")):
            if os.path.isfile(tmp):
                os.remove(tmp)
        reason = " ".join(f"{type(e).__name__}: {e}".split())   # one line, whatever torch's message holds
        raise StageError(f"{directory}: the disk is full ({what + ': ' if what else ''}{reason}); free some space, "
                         "then rerun the same command to resume") from None


# -----------------------------------------------------------------------------------------------------------
# Running the stages of one seed

NOW = {"stage": "start-up"}   # what is running, for the message on Ctrl-C


def read_results(run, stage):
    """<stage>.json of a finished stage; one line naming the file and the fix if it does not parse."""
    path = os.path.join(run.dir, stage.name + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise StageError(f"{path} is unreadable ({type(e).__name__}); recompute it with --redo={stage.name}") \
            from None


def finished(run, stage, fp):
    """Whether <stage>.json in the run's folder holds this fingerprint's result, with every file it wrote."""
    if not os.path.exists(os.path.join(run.dir, stage.name + ".json")):
        return False
    if read_results(run, stage).get("fingerprint") != fp:
        return False   # written by other code, or on another thread count / device: recomputed
    for f in stage.writes:
        if not readable(os.path.join(run.dir, f)):
            raise StageError(f"{os.path.join(run.dir, f)} is missing or unreadable; recompute it with "
                             f"--redo={stage.name}")
    return True


def execute(run, stage, fp):
    """Run one stage: it writes its files, then its results go to <stage>.json, written last."""
    NOW["stage"] = f"seed {run.seed}, stage {stage.name}"
    os.makedirs(run.dir, exist_ok=True)
    run.begin(stage.name)
    t0 = time.time()
    try:
        results = stage.fn(run)
    except FloatingPointError as e:   # a non-finite loss or model, wherever it was first noticed
        raise StageError(f"stage {stage.name}: {e}; try a smaller learning rate") from None
    except NotImplementedError as e:  # in a student copy, an exercise this stage needs; the stages before it ran
        pointer = exercises.not_written(e)
        if pointer is None:
            raise
        raise StageError(f"stage {stage.name}: {pointer}") from None
    write_json(os.path.join(run.dir, stage.name + ".json"), {**results, "seconds": time.time() - t0,
                                                             "fingerprint": fp})


def run_seed(stages, run_of, cfg, seed, always_reads, code, log):
    """Every stage of one seed, in order: done earlier here (same fingerprint) → skipped; in the cache → copied;
    else computed (and cached). cfg.redo=STAGE recomputes that stage and every stage after it; cfg.stop_after
    stops after one. run_of(stage): the Run it works in. always_reads: the options every stage reads. code: the
    pipeline's file, whose code_version enters every fingerprint. Returns {stage name: its results}, or None
    when stopped."""
    runs = [run_of(s) for s in stages]
    names = [s.name for s in stages]
    redo = cfg.redo.split(",")
    first_redo = 0 if "all" in redo else min([names.index(s) for s in redo if s in names], default=len(stages))
    root, keys, results = cache_root(cfg.cache), {}, {}
    for i, (stage, run) in enumerate(zip(stages, runs)):
        key = keys[stage.name] = stage_key(stage, run, keys, always_reads)
        fp = fingerprint(key, code_version(code))
        if i == first_redo:   # recomputed, and every stage after it is stale: forget them before anything else
            for later, r in zip(stages[i:], runs[i:]):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(r.dir, later.name + ".json"))
        with room(run.dir, f"stage {stage.name}"):
            if i < first_redo and finished(run, stage, fp):
                log(f"seed {seed} · {stage.name}: done earlier, skipped")
            elif i < first_redo and (origin := restore(run, stage, key, fp, root, log)):
                log(f"seed {seed} · {stage.name}: reused, same inputs as {origin}")
            else:
                try:
                    execute(run, stage, fp)
                except UnreadableFile as e:
                    writer = next((s.name for s, r in zip(stages, runs) for f in s.writes
                                   if os.path.abspath(os.path.join(r.dir, f)) == os.path.abspath(e.path)), stage.name)
                    raise StageError(f"{e.path} does not load ({e.reason}); recompute it with --redo={writer}") \
                        from None
                store(run, stage, key, fp, root, log)
                log(f"seed {seed} · {stage.name}: {read_results(run, stage)['seconds']:.1f} s")
        results[stage.name] = read_results(run, stage)
        if stage.name == cfg.stop_after:
            log(f"stopped after {stage.name} (--stop_after); rerun without it to resume")
            return None
    return results


# -----------------------------------------------------------------------------------------------------------
# The output directory, progress, and failing in one line

def check_out_dir(out_dir, seeds, config, redo):
    """Refuse to mix results of two configurations in one output directory (before writing anything).
    config: the options that change results, as saved in seed_<s>/config.json."""
    if "all" in redo.split(","):
        return
    for seed in seeds:
        path = os.path.join(seed_dir(out_dir, seed), "config.json")
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError):
                raise UsageError(f"{path} is unreadable (corrupt or truncated); use --redo=all to recompute "
                                 "this output directory, or another --out_dir") from None
            diff = sorted(k for k, v in config.items() if old.get(k) != v)
            if diff:
                raise UsageError(f"{out_dir} holds a run with other values of {', '.join(diff)}; "
                                 f"use another --out_dir, or --redo=all to overwrite it")


def lock_out_dir(out_dir):
    """One run at a time in an output directory: an exclusive lock on <out_dir>/.lock for the life of this
    process. The operating system releases it when the process ends, however it ends, so a crashed run never
    leaves it stuck. Returns the open lock file (keep a reference). Where fcntl is missing (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        os.makedirs(out_dir, exist_ok=True)
        f = open(os.path.join(out_dir, ".lock"), "w", encoding="utf-8")
    except OSError as e:   # /proc/x, a read-only disk: bad input, found here because only writing tells
        if disk_full(e, out_dir):
            raise
        raise UsageError(f"{out_dir}: cannot write there ({e.strerror}); use another --out_dir") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"{out_dir} is in use by another afd_mini run; wait for it, or use another --out_dir") \
            from None
    return f


@contextlib.contextmanager
def locked_out_dir(out_dir, seeds, config, redo):
    """The checked and locked output directory, for the length of a run; each seed's config.json written."""
    check_out_dir(out_dir, seeds, config, redo)
    lock = lock_out_dir(out_dir)
    try:
        for seed in seeds:
            os.makedirs(seed_dir(out_dir, seed), exist_ok=True)
            write_json(os.path.join(seed_dir(out_dir, seed), "config.json"), config)
        yield
    finally:
        if lock is not None:
            lock.close()


def log(line):
    tqdm.write(line, file=sys.stderr)   # one line per stage, bars or not


def progress(iterable, desc, enabled=True):
    """A progress bar on a terminal; in a log file (stderr not a terminal) a few plain lines instead of
    megabytes of carriage-return updates; nothing when not enabled."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(iterable, desc)
    return tqdm(iterable, desc=f"{desc:>13}", disable=not enabled, leave=False, dynamic_ncols=True)


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


def attempt(body, prog):
    """body() → (exit status, its value, the one line that says why it failed or None): bad input 2, a failed
    stage 1, Ctrl-C 130 (finished stages are saved), stdout closed early (… | head) 0."""
    try:
        return 0, body(), None
    except UsageError as e:
        return 2, None, f"{prog}: error: {e}"
    except StageError as e:
        return 1, None, f"{prog}: {e}"
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0, None, None
    except KeyboardInterrupt:
        return 130, None, (f"\n{prog}: interrupted in {NOW['stage']}; finished stages are saved: rerun the same "
                           "command to resume")


# -----------------------------------------------------------------------------------------------------------
# Many runs at once: torchrun starts K copies of the program, one per process (rank). For tiny models one run
# per process beats splitting one run's batches, so each rank takes its own share of the seeds (and of a sweep's
# points) and rank 0, once every rank is done, writes what a single process would. docs/DISTRIBUTED.md.

class Ranks:
    """This process's place among torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE in the environment);
    alone without them. On CUDA each rank takes its own GPU, cuda:LOCAL_RANK; on a CPU the machine's cores are
    split between the ranks on it (torch's thread count: part of every fingerprint)."""

    def __init__(self, environ=os.environ):
        self.rank, self.size = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
        self.local_rank, self.local_size = int(environ.get("LOCAL_RANK", 0)), int(environ.get("LOCAL_WORLD_SIZE", 1))
        if self.size == 1:
            return
        import datetime

        import torch.distributed as dist
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(self.local_rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_size))
        # a rank can wait for the slowest one for as long as that one's share of the work takes
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
        self.dist = dist

    def share(self, items):
        """This rank's share of a list: items r, r + K, r + 2K, ..."""
        return list(items)[self.rank::self.size]

    def gather(self, value):
        """Every rank's value, in rank order (all of them wait for the slowest)."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        self.dist.all_gather_object(out, value)
        return out

    def close(self):
        if self.size > 1:   # together: a rank that leaves while another still talks to it aborts the other
            self.dist.barrier()
            self.dist.destroy_process_group()


def launch(prog, parse, begin, work, end):
    """A run, alone or as one of torchrun's ranks, every failure one line (the failing rank's), never a hang:
        parse() → cfg               on every rank (a bad option: every rank stops; rank 0 says why)
        begin(cfg) → a context      on rank 0, held until the end: the output directory's guards
        work(cfg, ranks) → results  on every rank, its share; None: stopped early (--stop_after)
        end(cfg, [results, ...])    on rank 0, with every rank's results in rank order
    (begin, work and end write under cfg.out_dir: a full disk there is one line, exit status 1.)
    After each step the ranks agree whether to go on: every rank reaches every agreement, failed or not, so a
    rank that fails stops the others at the next one. Returns the exit status."""
    ranks = Ranks()
    UNWRITABLE.clear()   # a run of its own (a notebook's second): a cache fixed since the last one is tried again
    quiet = (contextlib.redirect_stdout(open(os.devnull, "w", encoding="utf-8")) if ranks.rank
             else contextlib.nullcontext())
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet)
        cfg = None

        def written(fn):   # once parsed: a full disk under the output directory is one line too
            def body():
                with room(cfg.out_dir) if cfg is not None else contextlib.nullcontext():
                    return fn()
            return body

        def step(fn, everywhere=True):
            status, value, line = attempt(written(fn), prog) if everywhere or ranks.rank == 0 else (0, None, None)
            outcomes = ranks.gather((status, line))
            if ranks.rank == 0:   # each failing rank's line once, and which rank it came from if not all did
                for text in dict.fromkeys(line for _, line in outcomes if line):
                    where = [r for r, (_, x) in enumerate(outcomes) if x == text]
                    print(text + (f" (rank {where[0]} of {ranks.size})" if len(where) < ranks.size else ""),
                          file=sys.stderr)
            return max(s for s, _ in outcomes), value

        try:
            status, cfg = step(parse)
            if cfg is None:   # bad input, or --help with its output cut short (… | head): nothing to run
                return status
            if not status:
                status, _ = step(lambda: stack.enter_context(begin(cfg)), everywhere=False)
            if not status:
                status, results = step(lambda: work(cfg, ranks))
            if not status and None not in (everyone := ranks.gather(results)):
                status, _ = step(lambda: end(cfg, everyone), everywhere=False)
            return status
        finally:
            ranks.close()


# -----------------------------------------------------------------------------------------------------------
# The command: every stage of every seed of every sweep point, then metrics.json and the report

def main(stages, config_class, presets, run_class, always_reads, argv=None, studies=None):
    """The pipeline's command line: its exit status. stages: its stage table, in order; config_class: its options
    (a RunOptions), whose module is the pipeline (its docstring's second paragraph is --help's text, its file the
    entry of the code hash); presets: {name: options}; run_class(cfg, seed): the Run its stages work in (its
    .control_world: the control world's); always_reads: the options every stage reads; studies: {name: Study}."""
    console.utf8_output()   # π, β, ‖ on a console or in a log file of any encoding (Windows' cp1252)
    pipeline = sys.modules[config_class.__module__]
    STUDIES.clear()
    STUDIES.update(studies or {})

    def parse():
        cfg = parse_args(sys.argv[1:] if argv is None else argv, stages, config_class, presets)
        if cfg.study:   # a known study, alone, and each of its points valid before any work
            if cfg.study not in STUDIES:
                raise UsageError(f"--study={cfg.study}: allowed studies are {', '.join(STUDIES) or 'none'}")
            if cfg.sweep:
                raise UsageError(f"--study={cfg.study} runs its own points; drop --sweep={cfg.sweep}")
            for _, values in STUDIES[cfg.study].points:
                cli.validate(dataclasses.replace(cfg, study="", **values), [s.name for s in stages])
        return cfg

    def work(cfg, ranks):
        if cfg.device == "mps" and ranks.rank == 0:
            log(MPS_UNTESTED)
        return run_seeds(cfg, ranks, stages, run_class, always_reads, pipeline.__file__)

    return launch(os.path.splitext(os.path.basename(pipeline.__file__))[0], parse, output_dirs, work, report_seeds)


def parse_args(argv, stages, config_class, presets):
    """defaults → preset → --config=FILE (JSON) → --key=value, checked (cli.py). --help prints the second paragraph
    of the pipeline's docstring (its commands) above the options."""
    usage = sys.modules[config_class.__module__].__doc__.split("\n\n")[1]
    return cli.parse_args(argv, config_class, presets, usage, [s.name for s in stages])


def points_of(cfg):
    """The runs a command asks for: itself, or each point of its --sweep (cli.sweep_points) or --study in a folder
    of its own."""
    if not cfg.sweep and not cfg.study:
        return [cfg]
    points = STUDIES[cfg.study].points if cfg.study else cli.sweep_points(cfg)
    return [dataclasses.replace(cfg, sweep="", study="", out_dir=os.path.join(cfg.out_dir, name), **values)
            for name, values in points]


def seeds_of(cfg):
    return list(range(cfg.seed, cfg.seed + cfg.seeds))


@contextlib.contextmanager
def output_dirs(cfg):
    """The output directories, checked and locked for the length of the run; the stage cache emptied if asked."""
    with contextlib.ExitStack() as stack:
        if cfg.sweep or cfg.study:   # the sweep's own folder: locked; each point's: as a run's
            stack.enter_context(locked_out_dir(cfg.out_dir, [], {}, cfg.redo))
        for point in points_of(cfg):
            stack.enter_context(locked_out_dir(point.out_dir, seeds_of(point), result_config(point), cfg.redo))
        if cfg.clear_cache and cache_root(cfg.cache):
            clear_cache(cache_root(cfg.cache), log)
        yield


def run_seeds(cfg, ranks, stages, run_class, always_reads, code):
    """This process's share of the runs (every seed of every point; all of them without torchrun), every stage of
    each (run_seed skips, reuses or computes it): each one's metrics.json, or None when stopped by --stop_after."""
    runs = []
    study = STUDIES[cfg.study] if cfg.study else None
    for point, seed in ranks.share([(point, seed) for point in points_of(cfg) for seed in seeds_of(point)]):
        run = run_class(point, seed)
        todo = [s for s in (study.stages if study else stages) if point.control or s.world != "control"]
        results = run_seed(todo, lambda s: run.control_world if s.world == "control" else run, point, seed,
                           always_reads, code, log)
        if results is None:   # --stop_after
            return None
        runs.append({**study.summary(results, seed), "config": dataclasses.asdict(point)} if study else
                    metrics.assemble(results, seed, run.world_seconds, dataclasses.asdict(point)))
        write_json(os.path.join(run.dir, "metrics.json"), runs[-1])
    return runs


def report_seeds(cfg, shares):
    """Every run's metrics (each rank's share) → each point's metrics.json, report.md and summary; for a sweep,
    sweep.json and its figure of every effect against the knob."""
    done = [m for share in shares for m in share]
    if cfg.study:   # the study's own outputs from every point's runs
        runs = {os.path.basename(p.out_dir): sorted((m for m in done if m["config"]["out_dir"] == p.out_dir),
                                                    key=lambda m: m["seed"]) for p in points_of(cfg)}
        print(report.write_study(cfg.study, cfg.out_dir, runs, STUDIES[cfg.study].knobs))
        return
    tops = {}
    for point in points_of(cfg):
        runs = sorted((m for m in done if m["config"]["out_dir"] == point.out_dir), key=lambda m: m["seed"])
        tops[point.out_dir] = top = metrics.combine(runs)
        write_json(os.path.join(point.out_dir, "metrics.json"), top)
        report.write_report(point.out_dir, runs)
        if not cfg.sweep:
            print(report.summary(top, point.out_dir))
    if cfg.sweep:
        sweep = metrics.sweep_metrics(cli.sweep_points(cfg), [tops[p.out_dir] for p in points_of(cfg)])
        write_json(os.path.join(cfg.out_dir, "sweep.json"), sweep)
        report.write_sweep(cfg.out_dir, sweep)
        print(report.sweep_summary(sweep, cfg.out_dir))
