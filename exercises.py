"""
exercises.py: self-checking classroom exercises for afd-mini. EXERCISES.md has the questions and the hints.

A coding exercise is a solution region of the real code (all in objectives.py), between two marker lines:

    # ---- exercise 1 (sft_loss): begin solution
    ...the solution...
    # ---- exercise 1: end solution

and its answer key is a handful of tests of tests/test_objectives.py, listed below with the exercise, with the
exercises whose code those tests also call (needs). What an exercise asks the student to derive, or to think
through, is stated in the real tree's docstrings as a paragraph after a marker line, which the student copy
replaces by a pointer ("Derive it: EXERCISES.md, exercise 11.", "Think it through: …"):

    Derived in exercise 11 (not in the student copy):
    ...the result and its derivation, up to a blank line or the docstring's end...
    Answered in exercise 7 (not in the student copy):
    ...the answer to a Think question, likewise...

The teacher's files (TEACHER_ONLY) are not copied: docs/TEACHING.md, docs/RUBRIC.md, tests/test_teaching.py, and
tests/teacher/, which holds the tests' wrong answers, the results the student copy must not state (checked in
every file of a fresh copy) and the passages of other files that a student copy replaces (README's and docs/RESULTS.md's answer to a Derive
question: TEACHER_ANSWERS's LEFT_OUT).

An experiment is a run of afd_mini.py with one option changed, and a prediction written down before it.

    python exercises.py list                  # the exercises, easy to hard, and which are left in this copy
    python exercises.py student DIR [N ...]   # a copy of the project in DIR with exercises N... (default: all)
                                              # blanked: each region becomes one raise NotImplementedError line
                                              # and each derived or answered paragraph a pointer to
                                              # EXERCISES.md, without the teacher's files
    python exercises.py check [N ...]         # run exercise N's tests (default: every coding exercise);
                                              # prints PASS, or first the one cause (an exercise to do first,
                                              # or the first failing test's message), then the other failures

Run list and check inside the copy you work in: they look at the files next to this one. In a student copy,
afd_mini.py runs every stage whose exercises are written; a stage that meets a blanked one stops the run with
one line that names it (not_written, which runner.py calls); the report skips a figure whose exercise is
blanked. Standard library only at import time; pytest is imported by check alone.
"""
import sys

if sys.version_info < (3, 10):   # first, in one line: on 3.9 the checks pass, then the pipeline dies after SFT
    print("afd-mini needs Python 3.10 or newer; this is Python %d.%d.%d" % sys.version_info[:3], file=sys.stderr)
    sys.exit(2)

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import traceback
from dataclasses import dataclass

import console

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["objectives.py"]               # the files with solution regions
ANSWER_KEY = "tests/test_objectives.py"   # the tests the coding exercises name


@dataclass(frozen=True)
class Exercise:
    number: int
    name: str           # the name in the markers (coding) or of the experiment
    level: str          # easy, medium, hard
    task: str           # one line: what to write, or what to predict
    tests: tuple = ()   # coding: the tests of ANSWER_KEY that check it, the one that names a cause most
                        # precisely first (check prints the first failing test's message first)
    needs: tuple = ()   # coding: the exercises whose code those tests call too (measured by
                        # tests/test_exercises.py: blank M alone, and exactly the checks that need M fail)
    command: str = ""   # experiment: the run to compare with the default one

    @property
    def coding(self):
        return bool(self.tests)


EXERCISES = [
    Exercise(1, "sft_loss", "easy",
             "the demonstrations' token NLL on response tokens only, per token or per sequence",
             ("test_sft_loss_ignores_masked_positions_exactly", "test_sft_loss_is_forward_kl",
              "test_sft_loss_rejects_an_unknown_normalize")),
    Exercise(2, "kl_estimators", "easy",
             "one-sample Monte Carlo estimates of KL(β‖π) on expert samples and of KL(π‖β) on policy samples",
             ("test_kl_mc_estimators_hand_example", "test_kl_mc_estimators_are_unbiased_in_their_own_direction")),
    Exercise(3, "lower_q", "easy",
             "predict SFT's gold reward when the demonstrator is right less often",
             command="python afd_mini.py --q=0.5 --out_dir=out_q05"),
    Exercise(4, "bradley_terry", "easy",
             "the preference loss, the mean of −log σ(s_chosen − s_rejected), without overflow",
             ("test_bradley_terry_loss_hand_example",
              "test_bradley_terry_loss_is_exact_at_extreme_score_gaps_in_float32")),
    Exercise(5, "rewards_to_go", "medium",
             "R_t = Σ_{t'≥t} r_t' over response tokens and 0 elsewhere, without a Python loop",
             ("test_rewards_to_go_hand_example",)),
    Exercise(6, "reverse_kl_reinforce", "medium",
             "leave-one-out advantages, and the REINFORCE surrogate whose expected gradient is ∇KL(π‖β)",
             ("test_leave_one_out_advantages_hand_example",
              "test_reverse_kl_reinforce_gradient_is_reverse_kl_gradient",
              "test_kl_shaped_advantages_give_the_gradient_of_reward_minus_kl_to_the_reference"),
             needs=(2, 5)),
    Exercise(7, "kl_k1_k3", "medium",
             "the per-token estimators k1 and k3 of KL(π‖π_ref) on samples of π",
             ("test_kl_k1_k3_unbiased_for_reverse_kl_to_reference_and_k3_nonnegative",
              "test_kl_k3_as_a_loss_pulls_toward_forward_kl_to_reference",
              "test_kl_k3_is_exact_where_both_probabilities_underflow_in_float32")),
    Exercise(8, "kl_coef", "medium",
             "predict where the adversarial and oracle policies move on the divergence plane when the KL penalty grows",
             command="python afd_mini.py --kl_coef=0.5 --out_dir=out_kl05"),
    Exercise(9, "discriminator", "hard",
             "the discriminator's class-balanced BCE, and the AIRL and GAIL rewards of its logit",
             ("test_discriminator_loss_without_masks_averages_each_class",
              "test_discriminator_loss_and_rewards_are_exact_at_extreme_logits_in_float32",
              "test_airl_and_gail_rewards_are_constants",
              "test_sequence_discriminator_recovers_log_ratio",
              "test_discriminator_rewards_policy_gradients_follow_their_divergences",
              "test_token_discriminator_recovers_occupancy_log_ratio",
              "test_init_sft_classifier_recovers_closed_form_logratio",
              "test_discriminator_fit_on_replicated_samples_recovers_log_ratio",
              "test_log_ratio_discriminator_optimum_is_the_exact_log_ratio",
              "test_log_ratio_logit_starts_at_zero_sums_over_tokens_and_trains_q_only",
              "test_token_level_log_ratio_discriminator_is_exact_only_without_a_state_ratio",
              "test_log_ratio_reward_model_optimum_is_the_classifier_optimum"),
             needs=(5,)),
    Exercise(10, "small_model", "hard",
             "predict the mode frequencies of SFT and of the reverse-KL policies when the model is tiny",
             command="python afd_mini.py --n_layer=1 --n_embd=16 --out_dir=out_tiny"),
    Exercise(11, "best_of_n_kl", "hard",
             "KL(π_BoN‖π) of Best-of-n, in closed form: derive it before you write it",
             ("test_best_of_n_distribution_by_enumeration_and_kl_bound",
              "test_best_of_n_kl_matches_enumeration_without_atoms")),
    Exercise(12, "no_signature", "hard",
             "predict Best-of-N with the Init-Demo and Init-SFT reward models when the demonstrator never signs",
             command="python afd_mini.py --signature_p=0 --out_dir=out_nosig"),
    Exercise(13, "generalized_jsd", "hard",
             "JSD_w(p‖q) per position, stable, with KL(p‖q) at w = 0 and KL(q‖p) at w = 1",
             ("test_generalized_jsd_ends_equal_kl_div_with_the_right_argument_order",
              "test_generalized_jsd_zero_on_identical_inputs_and_symmetric",
              "test_generalized_jsd_interior_tends_to_zero_not_to_the_end_kls",
              "test_generalized_jsd_is_exact_where_probabilities_underflow_in_float32")),
    Exercise(14, "plausible_best_of_n", "hard",
             "contrastive decoding's plausibility constraint on Best-of-N: eligible within τ nats of the likeliest",
             ("test_plausible_floor_is_relative_to_each_prompts_best_candidate",
              "test_best_of_n_plausible_hand_examples",
              "test_best_of_n_plausible_without_a_floor_is_best_of_n")),
]
BY_NUMBER = {e.number: e for e in EXERCISES}

BEGIN = re.compile(r"^(\s*)# ---- exercise (\d+) \((\w+)\): begin solution$")
END = re.compile(r"^\s*# ---- exercise (\d+): end solution$")
SENTINEL = re.compile(r'raise NotImplementedError\("Exercise (\d+) \((\w+)\): ')   # in a source line
RAISED = re.compile(r"NotImplementedError: Exercise (\d+) \((\w+)\): ")                # in a failure message
MESSAGE = re.compile(r"Exercise (\d+) \((\w+)\): ")                                    # the error's own
DERIVED = re.compile(r"^(\s*)(Derived|Answered) in exercise (\d+) \(not in the student copy\):$")   # docstrings
POINTER = {"Derived": "Derive it: EXERCISES.md, exercise {}.",             # what the student copy says instead
           "Answered": "Think it through: EXERCISES.md, exercise {}."}


def sentinel(ex):
    """The line a blanked region holds: it names the exercise and what to write."""
    message = f"Exercise {ex.number} ({ex.name}): {ex.task}; see EXERCISES.md"
    return f"raise NotImplementedError({json.dumps(message, ensure_ascii=False)})"   # a valid Python literal


# -----------------------------------------------------------------------------
# Regions: find them, blank them.

@dataclass(frozen=True)
class Region:
    number: int
    path: str     # relative to the project root
    begin: int    # line numbers (1-based) of the two markers
    end: int


def regions(root=ROOT):
    """Every solution region of SOURCES, in file order. A malformed marker is an error, not a skip."""
    found = []
    for path in SOURCES:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            lines = f.read().split("\n")
        current = None   # (number, line) of the open region
        for i, line in enumerate(lines, 1):
            begin, end = BEGIN.match(line), END.match(line)
            if begin:
                n, name = int(begin[2]), begin[3]
                if current:
                    raise ValueError(f"{path}:{i}: exercise {n} begins inside exercise {current[0]}")
                if n not in BY_NUMBER or BY_NUMBER[n].name != name or not BY_NUMBER[n].coding:
                    raise ValueError(f"{path}:{i}: exercises.py has no coding exercise {n} ({name})")
                current = (n, i)
            elif end:
                if not current or int(end[1]) != current[0]:
                    raise ValueError(f"{path}:{i}: the end of exercise {end[1]} without its begin")
                found.append(Region(current[0], path, current[1], i))
                current = None
            elif "# ---- exercise" in line:
                raise ValueError(f"{path}:{i}: not a marker in the format of exercises.py: {line.strip()}")
        if current:
            raise ValueError(f"{path}:{current[1]}: exercise {current[0]} never ends")
    return found


def derived_paragraphs(lines):
    """{marker line index: (exercise number, index past its paragraph, "Derived" or "Answered")} of a source
    file's lines (0-based): the paragraph runs to the first blank line or to the docstring's closing quotes on a
    line of their own."""
    found = {}
    for i, line in enumerate(lines):
        m = DERIVED.match(line)
        if not m:
            if re.search(r"(Derived|Answered) in exercise", line):
                raise ValueError(f"line {i + 1}: not a marker in the format of exercises.py: {line.strip()}")
            continue
        n, end = int(m[3]), i + 1
        if n not in BY_NUMBER or not BY_NUMBER[n].coding:
            raise ValueError(f"line {i + 1}: exercises.py has no coding exercise {n} to derive this")
        while end < len(lines) and lines[end].strip() not in ("", '"""'):
            if '"""' in lines[end]:
                raise ValueError(f"line {end + 1}: exercise {n}'s derived paragraph must end before the "
                                 f"docstring's closing quotes, on a line of their own")
            end += 1
        if end == i + 1:
            raise ValueError(f"line {i + 1}: exercise {n}'s derived paragraph is empty")
        found[i] = (n, end, m[2])
    return found


def derivations(root=ROOT, kinds=("Derived",)):
    """[(exercise number, path, first line, last line)] (1-based) of every derived paragraph of SOURCES (with
    kinds=("Derived", "Answered"), every answered one too), its marker line included: what the student copy
    leaves out."""
    found = []
    for path in SOURCES:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            found += [(n, path, i + 1, end) for i, (n, end, kind) in derived_paragraphs(lines).items()
                      if kind in kinds]
        except ValueError as e:
            raise ValueError(f"{path}:{e}") from None
    return found


def sentinels(root=ROOT):
    """[(exercise number, path, line)] of every sentinel left in SOURCES: the exercises still to do."""
    found = []
    for path in SOURCES:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            found += [(int(m[1]), path, i) for i, line in enumerate(f, 1) if (m := SENTINEL.search(line))]
    return found


def blank(text, numbers):
    """text with the regions of exercises `numbers` replaced by their sentinel; the markers stay, so the
    student sees where to write, and the sentinel is indented like the marker, so the file still parses.
    Their derived and answered paragraphs, marker line included, become one line that points to EXERCISES.md."""
    lines = text.split("\n")
    instead = {}   # line index → what replaces it (None: nothing)
    for i, (n, past, kind) in derived_paragraphs(lines).items():
        if n in numbers:
            instead.update(dict.fromkeys(range(i, past)))
            instead[i] = DERIVED.match(lines[i])[1] + POINTER[kind].format(n)
    out, skipping = [], False
    for i, line in enumerate(lines):
        if i in instead:
            out += [instead[i]] * (instead[i] is not None)
            continue
        begin, end = BEGIN.match(line), END.match(line)
        if begin and int(begin[2]) in numbers:
            out += [line, begin[1] + sentinel(BY_NUMBER[int(begin[2])])]
            skipping = True
        elif end and skipping:
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out)


def project_files(root):
    """The project's files, relative to root: what git tracks plus new files it does not ignore; outside a
    git checkout (a student copy) every file but caches and run outputs."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                                cwd=root, capture_output=True, encoding="utf-8", check=True).stdout.split("\0")
        files = [f for f in listed if f and os.path.isfile(os.path.join(root, f))]   # not deleted ones
        if files:   # none: root is a folder git ignores, such as a student copy inside the project
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in (".git", "__pycache__", ".pytest_cache") and not x.startswith("out")]
        files += [os.path.relpath(os.path.join(d, x), root) for x in names if not x.endswith((".pyc", ".pt"))]
    return files


TEACHER_ONLY = ("docs/TEACHING.md",   # the answers to every question: never in a student copy
                "docs/RUBRIC.md",     # what a full answer to each Derive, Think and Predict item holds
                "tests/test_teaching.py",   # TEACHING.md's predictions, quoted and checked
                "tests/teacher/")     # the tests' wrong answers, the hidden results, the passages left out
TEACHER_ANSWERS = "tests/teacher/answers.py"


def teacher_only(rel):
    """Whether the project file rel (relative to the root) is left out of a student copy."""
    return any(rel == t or t.endswith("/") and rel.startswith(t) for t in TEACHER_ONLY)


def teacher_answers(root=ROOT):
    """The module TEACHER_ANSWERS of the project at root (its WRONG answers, HIDDEN results, LEFT_OUT
    passages: its docstring), or None where it is not there: in a student copy."""
    import importlib.util
    path = os.path.join(root, TEACHER_ANSWERS)
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("teacher_answers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def left_out(text, rel, numbers, answers):
    """text, the project file rel, as a student copy holds it: each passage of TEACHER_ANSWERS's LEFT_OUT that
    states what one of the exercises `numbers` asks, replaced by what the copy says instead. (A passage no longer
    there is no error here: tests/test_exercises.py checks that each is found.)"""
    for n, path, pattern, instead in getattr(answers, "LEFT_OUT", []):
        if path == rel and n in numbers:
            text = re.sub(pattern, lambda m: instead, text)
    return text


def make_student_copy(dst, numbers=None, root=ROOT):
    """Copy the project into dst (new or empty) with the regions of exercises `numbers` (all) blanked, without
    the teacher's files (TEACHER_ONLY), and with the passages of other files that state what those exercises ask
    replaced (TEACHER_ANSWERS's LEFT_OUT)."""
    numbers = set(numbers or [e.number for e in EXERCISES if e.coding])
    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ValueError(f"{dst} exists and is not empty: give a new directory")
    missing = numbers - {r.number for r in regions(root)}   # and regions() refuses broken markers
    derivations(root)                                        # as this does broken derived paragraphs
    if missing:
        raise ValueError(f"no solution region for exercise {', '.join(map(str, sorted(missing)))} in {root}")
    answers = teacher_answers(root)
    passages = {path for n, path, *_ in getattr(answers, "LEFT_OUT", []) if n in numbers}
    for rel in project_files(root):
        if teacher_only(rel):
            continue
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if rel in SOURCES or rel in passages:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
            text = blank(text, numbers) if rel in SOURCES else left_out(text, rel, numbers, answers)
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
            shutil.copymode(os.path.join(root, rel), target)
        else:
            shutil.copy2(os.path.join(root, rel), target)


def not_written(error):
    """A one-line pointer to the exercise whose sentinel raised error, naming the line that raised it, or None
    for any other error. runner.py fails a stage with it, after the stages before it ran, so that a student
    copy runs every stage whose exercises are written."""
    blanked = isinstance(error, NotImplementedError) and MESSAGE.match(str(error))
    if not blanked or int(blanked[1]) not in BY_NUMBER:
        return None
    n, frame = int(blanked[1]), traceback.extract_tb(error.__traceback__)[-1]
    where = f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
    return (f"exercise {n} ({BY_NUMBER[n].name}) is not written yet: {where} raises NotImplementedError; "
            f"see EXERCISES.md, then run: python exercises.py check {n}")


# -----------------------------------------------------------------------------
# Checking: run an exercise's tests, say what broke in one line per test.

def failure(report):
    """(one line, file:line) of a failure: pytest's crash message, which for test_objectives.py's assertions
    names the equation, with what was expected and what came back, and where it was raised; not the traceback.
    An assertion's message is joined into one line, up to pytest's own explanation of the assert; another error
    (a TypeError in the student's code) is its first line and where it was raised."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is None:   # a collection error (an import failed): the last line says what, the last frame where
        text = str(report.longrepr)
        what = text.strip().split("\n")[-1].removeprefix("E").strip()
        frames = re.findall(r'File "([^"]+)", line (\d+)|^(\S+\.py):(\d+): in ', text, re.M)
        if frames:
            a, b, c, d = frames[-1]
            what += f" ({os.path.relpath(a or c, ROOT)}:{b or d})"
        return what, ""
    where = f"{os.path.relpath(crash.path, ROOT)}:{crash.lineno}"
    lines = crash.message.strip().split("\n")
    if lines[0].startswith("AssertionError"):
        message = []
        for line in lines:
            if line.startswith("assert "):   # pytest's explanation of the failed assert: not the message
                break
            message.append(line.strip())
        return " ".join(l for l in message if l).removeprefix("AssertionError").removeprefix(": "), where
    if lines[0].startswith("assert "):   # an assert without a message: pytest's explanation, its first line
        return lines[0], where
    inside = not where.startswith("..") and not RAISED.search(lines[0])   # in the project, not a sentinel
    return lines[0] + f" (raised at {where})" * inside, where


def run_tests(names):
    """Run tests of ANSWER_KEY by function name, in this process. Returns {name: None if it passed, else
    failure(its first failed report)} (a test that did not run is missing), and the collection error or None."""
    import pytest

    outcome, errors = {}, []

    class Collect:
        def pytest_runtest_logreport(self, report):
            name = report.nodeid.split("::")[-1].split("[")[0]   # parametrised cases count as one test
            if report.failed and outcome.get(name) is None:
                outcome[name] = failure(report)
            elif report.when == "call":
                outcome.setdefault(name, None)

        def pytest_collectreport(self, report):
            if report.failed:
                errors.append(failure(report)[0])

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # the answer key needs no plugins, and loading them is slow
    path = os.path.join(ROOT, ANSWER_KEY)
    args = [f"{path}::{n}" for n in names] + ["-q", "-p", "no:cacheprovider", "--rootdir", ROOT]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):   # its report:
        pytest.main(args, plugins=[Collect()])                                                    # ours is shorter
    return outcome, (errors[0] if errors else None)


def check(numbers):
    """Print a verdict per exercise: PASS, or FAIL and first the one cause, then a line per other failing
    test. The cause is an exercise it needs that is not written yet or fails its own tests (do that one
    first), or else the message of its first failing test (one line: failure), in the order of ex.tests.
    Return 0 if all pass."""
    exercises = [BY_NUMBER[n] for n in numbers]
    todo = {n for n, _, _ in sentinels()}
    needed = [BY_NUMBER[m] for m in dict.fromkeys(m for ex in exercises for m in ex.needs) if m not in todo]
    outcome, error = run_tests(list(dict.fromkeys(t for ex in exercises + needed for t in ex.tests)))
    all_pass = True
    for ex in exercises:
        failing = [t for t in ex.tests if outcome.get(t, ("did not run", "")) is not None]
        ok = not (error or failing)
        all_pass = all_pass and ok
        n_tests = f"{len(ex.tests)} test" + "s" * (len(ex.tests) > 1)
        print(f"exercise {ex.number} ({ex.name}): " + (f"PASS ({n_tests})" if ok else "FAIL"))
        if error:
            print(f"  {ANSWER_KEY} does not import: {error}")
            continue
        lines = [first(ex, m, todo, outcome) for m in ex.needs]
        for t in failing:
            lines.append(explain(ex, t, outcome, named=any(lines)))
        for line in dict.fromkeys(line for line in lines if line):   # a blanked region fails its tests the
            print(f"  {line}")                                         # same way: say it once
        broken = [t for t in failing if t in outcome and not RAISED.search(outcome[t][0])]
        if broken:
            print(f"  the whole traceback: python -m pytest {ANSWER_KEY}::{broken[0]}")
    return 0 if all_pass else 1


def first(ex, m, todo, outcome):
    """The line that says to do exercise m, which exercise ex needs, first; None if m passes its tests."""
    dep = BY_NUMBER[m]
    if m in todo:
        return f"needs exercise {m} ({dep.name}), not written yet: do exercise {m} first"
    if any(outcome.get(t, ("did not run", "")) is not None for t in dep.tests):
        return (f"needs exercise {m} ({dep.name}), which fails its check: do exercise {m} first "
                f"(python exercises.py check {m})")
    return None


def explain(ex, test, outcome, named):
    """One line for a failing test: its one-line message (alone, for the exercise's first cause; after
    the test's name once a cause is named), or the blanked exercise it ran into; None when that is an exercise
    ex.needs, which has its own line."""
    if test not in outcome:
        return f"{test}: did not run; is it in {ANSWER_KEY}?"
    message, where = outcome[test]
    blanked = RAISED.search(message)
    if not blanked:
        return f"{test}: {message}" if named else message
    n = int(blanked[1])
    if n == ex.number:
        return f"not written yet: {where} raises NotImplementedError"
    if n in ex.needs:
        return None
    return f"{test} uses exercise {n} ({BY_NUMBER[n].name}), not written yet ({where}): do exercise {n} first"


# -----------------------------------------------------------------------------

def list_exercises():
    todo = {n for n, _, _ in sentinels()}
    where = {}
    for r in regions():
        where.setdefault(r.number, f"{r.path}:{r.begin}")
    for ex in EXERCISES:
        status = ("to do" if ex.number in todo else "written") if ex.coding else "experiment"
        place = where.get(ex.number, "no region!") if ex.coding else ex.command
        print(f"{ex.number:>2}  {ex.level:<6}  {ex.name:<20}  {status:<10}  {place}")
        needs = f"; needs exercise{'s' * (len(ex.needs) > 1)} {' and '.join(map(str, ex.needs))} first"
        print(f"    {ex.task}" + needs * bool(ex.needs))


def coding_numbers(args):
    """Exercise numbers from the command line (default: every coding exercise)."""
    numbers = []
    for a in args:
        if not a.isdigit() or int(a) not in BY_NUMBER:
            raise ValueError(f"{a!r} is not an exercise number (python exercises.py list)")
        if not BY_NUMBER[int(a)].coding:
            raise ValueError(f"exercise {a} is an experiment, nothing to check or blank: see EXERCISES.md")
        numbers.append(int(a))
    return numbers or [e.number for e in EXERCISES if e.coding]


def main(argv):
    console.utf8_output()
    usage = "usage: python exercises.py list | student DIR [N ...] | check [N ...]"
    try:
        if argv[:1] == ["list"] and len(argv) == 1:
            list_exercises()
            return 0
        if argv[:1] == ["student"] and len(argv) >= 2:
            make_student_copy(argv[1], coding_numbers(argv[2:]))
            blanked = sorted({n for n, _, _ in sentinels(argv[1])})
            print(f"student copy in {argv[1]}, exercises {', '.join(map(str, blanked))} to do: "
                  f"start with EXERCISES.md")
            return 0
        if argv[:1] == ["check"]:
            return check(coding_numbers(argv[1:]))
    except ValueError as e:
        print(f"exercises: error: {e}", file=sys.stderr)
        return 2
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
