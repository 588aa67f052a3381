"""
Tests of exercises.py: the student copy it writes, the checks it runs, and the pointer a stage shows that needs
a blanked exercise.

The student copy (every coding exercise blanked) is written once, by the command a teacher runs, and shared.
The subprocess tests run pytest in it, in a copy with a mistake, or in the real tree (four runs of about 4 s,
and two runs of afd_mini.py that stop at a blanked exercise), then `exercises.py check` in the copies holding
the wrong answers of the teacher's WRONG (a dozen) and its RIGHT answers, and in 9 copies with one exercise
blanked each (about 4 s each on an idle machine), and a short quick run in a copy whose exercises are done, for
the leak test; the rest read files.

The teacher's answers (the wrong answers, the hidden results: tests/teacher/answers.py) are not in a student
copy: there, the tests that need them are skipped.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

import exercises as ex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODING = [e for e in ex.EXERCISES if e.coding]
SOURCE = ex.SOURCES[0]
ANSWERS = ex.teacher_answers(ROOT)   # None in a student copy
teacher = pytest.mark.skipif(ANSWERS is None, reason=f"a student copy: no {ex.TEACHER_ANSWERS}")
WRONG, RIGHT = (ANSWERS.WRONG, ANSWERS.RIGHT) if ANSWERS else ([], [])


def python(args, cwd, timeout=300):
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}   # pytest plugins cost seconds to load
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read(root, path=SOURCE):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return f.read()


def sentinel_lines(root, number):
    """Line numbers of exercise `number`'s sentinels in SOURCE under root."""
    return [i for i, line in enumerate(read(root).split("\n"), 1)
            if line.strip().startswith(f'raise NotImplementedError("Exercise {number} (')]


def verdicts(output):
    """`python exercises.py check` output → {number: (verdict line, [detail lines])}."""
    blocks = {}
    for line in output.splitlines():
        head = re.match(r"exercise (\d+) \(\w+\): ", line)
        if head:
            blocks[int(head[1])] = (line, [])
        else:
            blocks[max(blocks)][1].append(line.strip())
    return blocks


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("student") / "afd-mini")
    made = python(["exercises.py", "student", dst], cwd=ROOT)
    assert made.returncode == 0, made.stderr
    return dst


# -----------------------------------------------------------------------------
# the registry, the markers and EXERCISES.md agree

def test_exercises_are_numbered_easy_to_hard_and_mix_code_with_experiments():
    assert [e.number for e in ex.EXERCISES] == list(range(1, len(ex.EXERCISES) + 1))
    assert len(ex.EXERCISES) >= 8 and len(CODING) >= 6 and len(CODING) < len(ex.EXERCISES)
    levels = ["easy", "medium", "hard"]
    assert [levels.index(e.level) for e in ex.EXERCISES] == sorted(levels.index(e.level) for e in ex.EXERCISES)
    assert len({e.name for e in ex.EXERCISES}) == len(ex.EXERCISES), "two exercises share a name"


def test_every_coding_exercise_has_regions_and_real_tests():
    numbers = [r.number for r in ex.regions()]
    assert set(numbers) == {e.number for e in CODING}, "a coding exercise without a region (or the reverse)"
    defined = re.findall(r"^def (test_\w+)", read(ROOT, ex.ANSWER_KEY), re.M)
    named = [t for e in CODING for t in e.tests]
    assert set(named) <= set(defined), f"not in {ex.ANSWER_KEY}: {set(named) - set(defined)}"
    assert len(named) == len(set(named)), "a test is the answer key of two exercises"
    assert ex.sentinels(ROOT) == [], "the real tree holds a blanked exercise"


def test_regions_refuse_broken_markers(tmp_path):
    good = ["def f():", "    # ---- exercise 1 (sft_loss): begin solution", "    return 1",
            "    # ---- exercise 1: end solution", ""]
    broken = {
        "never ends": good[:3],
        "without its begin": [good[0], good[2], good[3]],
        "no coding exercise": [good[0], good[1].replace("sft_loss", "sft"), *good[2:]],
        "begins inside": [good[0], good[1], good[1].replace("1 (sft_loss)", "2 (kl_estimators)"), *good[2:]],
        "not a marker": [good[0], good[1].replace("begin solution", "begin"), *good[2:]],
    }
    (tmp_path / SOURCE).write_text("\n".join(good))
    assert [(r.number, r.begin, r.end) for r in ex.regions(str(tmp_path))] == [(1, 2, 4)]
    for error, lines in broken.items():
        (tmp_path / SOURCE).write_text("\n".join(lines))
        with pytest.raises(ValueError, match=error):
            ex.regions(str(tmp_path))


def test_derived_paragraphs_refuse_broken_markers(tmp_path):
    marker = "    Derived in exercise 11 (not in the student copy):"
    good = ["def f():", '    """What f is.', "", marker, "    The result.", "    Its derivation.", '    """', ""]
    broken = {
        "must end before": good[:5] + ['    Its derivation."""', ""],
        "is empty": good[:4] + good[6:],
        "no coding exercise 3": [*good[:3], marker.replace("11", "3"), *good[4:]],
        "not a marker": [*good[:3], marker.replace(":", ""), *good[4:]],
    }
    (tmp_path / SOURCE).write_text("\n".join(good))
    assert ex.derivations(str(tmp_path)) == [(11, SOURCE, 4, 6)]
    assert ex.blank("\n".join(good), {11}).split("\n")[3:5] == ["    Derive it: EXERCISES.md, exercise 11.", '    """']
    assert ex.blank("\n".join(good), {1}) == "\n".join(good)   # another exercise's: kept
    answered = [*good[:3], marker.replace("Derived", "Answered"), *good[4:]]   # a Think question's answer
    (tmp_path / SOURCE).write_text("\n".join(answered))
    assert ex.derivations(str(tmp_path)) == [] and \
        ex.derivations(str(tmp_path), kinds=("Answered",)) == [(11, SOURCE, 4, 6)]
    assert ex.blank("\n".join(answered), {11}).split("\n")[3:5] == \
        ["    Think it through: EXERCISES.md, exercise 11.", '    """']
    broken["not a marker in the format"] = [*good[:3], "    Answered in exercise 11:", *good[4:]]
    for error, lines in broken.items():
        (tmp_path / SOURCE).write_text("\n".join(lines))
        with pytest.raises(ValueError, match=error):
            ex.derivations(str(tmp_path))


def docstrings(root):
    """{function name: its docstring} of SOURCE under root."""
    return {f.name: ast.get_docstring(f) or "" for f in ast.walk(ast.parse(read(root)))
            if isinstance(f, ast.FunctionDef)}


@teacher
@pytest.mark.slow
def test_student_copy_leaves_out_what_the_exercises_derive(student):
    """The real tree's docstrings state each derived result; the student copy's, of every function with a
    region or a derived or answered paragraph, state none and point to EXERCISES.md; the answer key's messages
    never print one (whitespace aside)."""
    derived_results = ANSWERS.DERIVED_RESULTS
    assert sorted({n for n, *_ in ex.derivations(ROOT)}) == sorted(derived_results)
    lines = read(ROOT).split("\n")
    enclosing = lambda i: [m[1] for m in (re.match(r"\s*def (\w+)\(", l) for l in lines[:i]) if m][-1]
    owner = {enclosing(first): n for n, _, first, _ in ex.derivations(ROOT)}
    answered = {enclosing(first): n for n, _, first, _ in ex.derivations(ROOT, kinds=("Answered",))}
    blanked = {enclosing(r.begin) for r in ex.regions(ROOT)} | set(owner) | set(answered)
    real, copy = docstrings(ROOT), docstrings(student)
    answer_key = " ".join(read(ROOT, ex.ANSWER_KEY).split())
    for n, phrases in derived_results.items():
        for phrase in phrases:
            assert any(phrase in real[f] for f, m in owner.items() if m == n), \
                f"exercise {n}'s derived paragraphs do not state {phrase!r}"
            assert not [f for f in blanked if phrase in copy[f]], f"the student copy states {phrase!r}"
            assert " ".join(phrase.split()) not in answer_key, f"{ex.ANSWER_KEY} prints {phrase!r}"
    for f, n in owner.items():
        assert f"Derive it: EXERCISES.md, exercise {n}." in copy[f], f"{f}: no pointer to exercise {n}"
    for f, n in answered.items():
        assert f"Think it through: EXERCISES.md, exercise {n}." in copy[f], f"{f}: no pointer to exercise {n}"


def exercises_md_sections():
    """{exercise number: its section of EXERCISES.md, heading line first}."""
    parts = re.split(r"^## (?=\d+\. )", read(ROOT, "EXERCISES.md"), flags=re.M)[1:]
    return {int(part.split(".")[0]): part.split("\n---")[0] for part in parts}


def test_exercises_md_says_what_to_derive_and_what_to_read():
    """A coding exercise has a Derive list exactly when its docstrings have derived paragraphs; one without is
    a reading exercise (its heading says so, and it has a Read list)."""
    derived = {n for n, *_ in ex.derivations(ROOT)}
    for e in CODING:
        section = exercises_md_sections()[e.number]
        derive, read_list = bool(re.search(r"^Derive$", section, re.M)), bool(re.search(r"^Read$", section, re.M))
        assert derive == (e.number in derived), f"exercise {e.number}: a Derive list in EXERCISES.md: {derive}, " \
                                                f"derived paragraphs in {SOURCE}: {e.number in derived}"
        reading = section.split("\n")[0].endswith("reading)")
        assert reading == read_list == (not derive), \
            f"exercise {e.number}: neither derived nor marked as reading (or both)"


def test_exercises_md_states_the_needs_exercises_py_declares():
    for e in CODING:
        stated = [int(n) for line in re.findall(r"^Needs: (.*)$", exercises_md_sections()[e.number], re.M)
                  for n in re.findall(r"exercise (\d+)", line)]
        assert sorted(stated) == sorted(e.needs), f"exercise {e.number}: EXERCISES.md says it needs {stated}, " \
                                                  f"exercises.py {list(e.needs)}"


def test_exercises_md_names_the_stages_kl_coef_weighs():
    """Exercise 8 lists the stages whose reward --kl_coef weighs (the options each stage reads: afd_mini.STAGES),
    and says that rl_init_sft reads --rm_kl_coef instead."""
    import afd_mini
    weighs = lambda option: [s.name for s in afd_mini.STAGES if option in s.reads]
    section = exercises_md_sections()[8]
    listed = re.search(r"stage \(((?:`\w+`, )*`\w+`)\)\s+subtracts kl_coef", section)
    assert listed, "exercise 8 no longer lists the stages in the form this test reads"
    assert re.findall(r"`(\w+)`", listed[1]) == weighs("kl_coef"), "exercise 8 lists other stages than --kl_coef's"
    assert weighs("rm_kl_coef") == ["rl_init_sft"] and "`rl_init_sft`" in section and "`--rm_kl_coef`" in section


def test_exercises_md_has_every_check_command_and_every_run():
    text = read(ROOT, "EXERCISES.md")
    for e in ex.EXERCISES:
        assert re.search(rf"^## {e.number}\. ", text, re.M), f"EXERCISES.md has no section for exercise {e.number}"
        wanted = f"python exercises.py check {e.number}" if e.coding else e.command
        assert wanted in text, f"EXERCISES.md does not show `{wanted}`"


def test_experiment_runs_are_valid_afd_mini_options_off_the_default():
    import afd_mini
    import runner
    parse = lambda argv: runner.parse_args(argv, afd_mini.STAGES, afd_mini.Config, afd_mini.PRESETS)
    default = parse([])
    for e in ex.EXERCISES:
        if not e.coding:
            command = e.command.split()
            assert command[:2] == ["python", "afd_mini.py"], e.command
            cfg = parse(command[2:])   # raises on an unknown option or a bad value
            changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(default, k)} - {"out_dir"}
            assert changed, f"exercise {e.number} runs the default configuration: {e.command}"


# -----------------------------------------------------------------------------
# the student copy

@teacher
@pytest.mark.slow
def test_student_copy_blanks_the_solutions_and_changes_nothing_else(student):
    """Every file but the teacher's, byte for byte, but the solution regions, the derived and answered
    paragraphs and the LEFT_OUT passages, each replaced as the teacher's answers say."""
    files = ex.project_files(ROOT)
    assert "exercises.py" in files and "EXERCISES.md" in files
    assert ex.TEACHER_ANSWERS in files and ex.teacher_only(ex.TEACHER_ANSWERS)
    for rel in ex.TEACHER_ONLY:   # the teacher's guide and answers
        assert not os.path.exists(os.path.join(student, rel)), f"{rel} is in the student copy"
    passages = {path for _, path, *_ in getattr(ANSWERS, "LEFT_OUT", [])}
    for rel in files:
        if ex.teacher_only(rel):
            continue
        assert os.path.isfile(os.path.join(student, rel)), f"{rel} is missing from the student copy"
        if rel in passages:
            left_out = ex.left_out(read(ROOT, rel), rel, {e.number for e in CODING}, ANSWERS)
            assert left_out != read(ROOT, rel) and read(student, rel) == left_out, \
                f"{rel}: the student copy should replace exactly its LEFT_OUT passages"
        elif rel != SOURCE:
            with open(os.path.join(ROOT, rel), "rb") as a, open(os.path.join(student, rel), "rb") as b:
                assert a.read() == b.read(), f"{rel} differs in the student copy"
    real, copy = read(ROOT).split("\n"), read(student).split("\n")
    ast.parse("\n".join(copy))   # still a module
    real_regions, copy_regions = ex.regions(ROOT), ex.regions(student)
    assert [r.number for r in copy_regions] == [r.number for r in real_regions]
    for r in copy_regions:   # each region holds one line: its sentinel, indented like the marker
        indent = copy[r.begin - 1][:len(copy[r.begin - 1]) - len(copy[r.begin - 1].lstrip())]
        assert copy[r.begin:r.end - 1] == [indent + ex.sentinel(ex.BY_NUMBER[r.number])]
    outside = lambda lines, regions: [l for i, l in enumerate(lines, 1)
                                      if not any(r.begin < i < r.end for r in regions)]
    derived, skip = {first: (n, last, kind) for kind in ex.POINTER
                     for n, _, first, last in ex.derivations(ROOT, kinds=(kind,))}, 0
    expected = []   # the real lines outside the regions, each derived or answered paragraph one pointer line
    for i, line in enumerate(real, 1):
        if i <= skip or any(r.begin < i < r.end for r in real_regions):
            continue
        if i in derived:
            n, skip, kind = derived[i]
            line = line[:len(line) - len(line.lstrip())] + ex.POINTER[kind].format(n)
        expected.append(line)
    assert outside(copy, copy_regions) == expected, "a line outside the regions and derived paragraphs changed"
    copied = {l.strip() for l in copy}
    for r in real_regions:
        for line in real[r.begin:r.end - 1]:
            assert line.strip() not in copied, f"exercise {r.number}'s solution survives: {line.strip()}"


@pytest.mark.slow
def test_student_copy_refuses_a_directory_in_use(student):
    refused = python(["exercises.py", "student", student], cwd=ROOT)
    assert refused.returncode == 2 and "not empty" in refused.stderr


def test_a_partial_student_copy_blanks_only_the_exercises_given(tmp_path):
    ex.make_student_copy(str(tmp_path / "some"), [5, 2])   # a teacher hands out exercises 2 and 5 only
    assert sorted(n for n, _, _ in ex.sentinels(str(tmp_path / "some"))) == [2, 2, 5]


# -----------------------------------------------------------------------------
# no answers in the student copy: the leak test

def texts(root, rels):
    """{rel: text} of the files rels under root that are text (UTF-8): figures, checkpoints and bytecode aside."""
    found = {}
    for rel in rels:
        if rel.endswith((".png", ".pt", ".pyc")):
            continue
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                found[rel] = f.read()
        except UnicodeDecodeError:
            continue
    return found


def leaks(found):
    """'file:line: exercise N: pattern' for every HIDDEN pattern of the teacher's answers in {name: text}."""
    return [f"{name}:{text[:m.start()].count(chr(10)) + 1}: exercise {n}: {m[0]!r}"
            for n, patterns in ANSWERS.HIDDEN.items() for pattern in patterns
            for name, text in found.items() for m in re.finditer(pattern, text)]


def all_files(root):
    return [os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names]


@teacher
def test_each_hidden_result_and_each_passage_left_out_is_in_the_full_project():
    """The leak test has teeth: each exercise's HIDDEN patterns match, in the full project outside the teacher's
    answers, at least once (a pattern that matches nothing guards nothing), every LEFT_OUT passage is still in its
    file (else a student copy would keep its new wording, or the passage moved), the files a student copy
    rewrites are not the teacher's, and every exercise the answers hide a result of exists."""
    project = texts(ROOT, [f for f in ex.project_files(ROOT) if f != ex.TEACHER_ANSWERS])
    found = leaks(project)
    for n in ANSWERS.HIDDEN:
        assert n in ex.BY_NUMBER, f"the teacher's answers hide a result of exercise {n}, which does not exist"
        assert any(f": exercise {n}: " in line for line in found), \
            f"no HIDDEN pattern of exercise {n} matches any file of the project: update {ex.TEACHER_ANSWERS}"
    for n, path, pattern, _ in ANSWERS.LEFT_OUT:
        assert not ex.teacher_only(path) and re.search(pattern, project[path]), \
            f"exercise {n}'s passage to leave out of {path} is no longer there: update {ex.TEACHER_ANSWERS}'s " \
            f"LEFT_OUT (and check that the new wording does not state it): {pattern[:60]}…"
    assert not any(ex.teacher_only(path) for path in ex.SOURCES)


@teacher
@pytest.mark.slow
def test_a_student_copy_and_what_a_run_there_writes_hold_no_hidden_result(student, tmp_path):
    """No HIDDEN pattern of the teacher's answers, for any exercise (what it asks to derive, think through or
    predict), in any file of a fresh student copy (made by the teacher's command: docstrings, README, docs, tests,
    the code), nor, once its exercises are done (the solution tree's regions written back), in any text file that
    a --quick run writes there (report.md, metrics.json, the stages' files) nor in what it prints."""
    copied = all_files(student)
    assert set(copied) >= {"README.md", "EXERCISES.md", SOURCE, "report.py", "docs/RESULTS.md"}
    found = leaks(texts(student, copied))
    assert not found, "the student copy states what an exercise asks:\n" + "\n".join(found)
    copy = str(tmp_path / "copy")
    shutil.copytree(student, copy)
    lines, real = read(copy).split("\n"), read(ROOT).split("\n")
    for mine, theirs in reversed(list(zip(ex.regions(copy), ex.regions(ROOT)))):   # the student's answers
        lines[mine.begin:mine.end - 1] = real[theirs.begin:theirs.end - 1]
    with open(os.path.join(copy, SOURCE), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    assert ex.sentinels(copy) == []
    before = set(all_files(copy))
    tiny = ["--pretrain_steps=5", "--sft_steps=5", "--sft_short_steps=2", "--rl_iters=1", "--rm_steps=2", "--dpo_steps=2",
            "--n_layer=1", "--n_embd=16", "--n_base=300", "--n_demo=64", "--n_pref=64", "--n_eval=16", "--rl_prompts=4",
            "--rm_samples=16", "--bon_prompts=4", "--bon_max_n=4", "--probe_prompts=4", "--eval_samples=1"]
    ran = python(["afd_mini.py", "--quick", "--out_dir=out", "--progress=false", "--cache=off", *tiny], cwd=copy,
                 timeout=1800)   # every stage and the report: 2 CPU-minutes (13 minutes on a loaded 2-core machine)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    written = [f for f in all_files(copy) if f not in before and "__pycache__" not in f]
    assert "out/report.md" in written and "out/metrics.json" in written, written
    found = leaks({**texts(copy, written), "(its output)": ran.stdout + ran.stderr})
    assert not found, "a run in the student copy states what an exercise asks:\n" + "\n".join(found)


# -----------------------------------------------------------------------------
# the checks, run as a student runs them

@pytest.mark.slow
def test_in_the_student_copy_exactly_the_exercises_tests_fail(student, tmp_path):
    report = tmp_path / "junit.xml"
    files = [ex.ANSWER_KEY, "tests/test_world.py"]   # the world: no exercise uses it
    python(["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files], cwd=student)
    failed, passed = {}, 0
    for case in ET.parse(report).iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is None:
            passed += case.find("skipped") is None
        else:
            failed[case.get("name").split("[")[0]] = problem.get("message")
    owner = {t: e for e in CODING for t in e.tests}
    assert set(failed) == set(owner), \
        f"should fail: {set(owner) - set(failed)}; should pass: {set(failed) - set(owner)}"
    for test, message in failed.items():
        assert f"Exercise {owner[test].number} ({owner[test].name}): " in message, f"{test}: {message}"
    assert passed >= 20, "the tests that use no exercise did not run"


@pytest.mark.slow
def test_check_fails_each_exercise_in_the_student_copy_naming_it(student):
    checked = python(["exercises.py", "check"], cwd=student)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    blocks = verdicts(checked.stdout)
    assert sorted(blocks) == [e.number for e in CODING]
    for e in CODING:
        head, details = blocks[e.number]
        assert head == f"exercise {e.number} ({e.name}): FAIL"
        first = [f"needs exercise {m} ({ex.BY_NUMBER[m].name}), not written yet: do exercise {m} first" for m in e.needs]
        own = {f"not written yet: {SOURCE}:{n} raises NotImplementedError" for n in sentinel_lines(student, e.number)}
        assert details[:len(first)] == first, f"exercise {e.number}: {details}"
        assert details[len(first):] and set(details[len(first):]) <= own, f"exercise {e.number}: {details}"


@pytest.mark.slow
def test_check_passes_every_exercise_in_the_real_tree():
    checked = python(["exercises.py", "check"], cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    blocks = verdicts(checked.stdout)
    assert sorted(blocks) == [e.number for e in CODING]
    for e in CODING:
        assert blocks[e.number] == (f"exercise {e.number} ({e.name}): PASS ({len(e.tests)} test"
                                    + "s" * (len(e.tests) > 1) + ")", [])


@pytest.mark.slow
@teacher
def test_check_names_the_broken_equation_and_the_missing_exercise(tmp_path):
    copy = str(tmp_path / "copy")
    ex.make_student_copy(copy, [2])
    for number, function, code in ANSWERS.PLANTED:   # sft_loss reads the padding; rewards_to_go sums forwards
        plant(copy, number, function, code)
    checked = python(["exercises.py", "check", "1", "6", "9", "11"], cwd=copy)
    assert checked.returncode == 1
    blocks = verdicts(checked.stdout)
    assert blocks[1][0] == "exercise 1 (sft_loss): FAIL"
    assert blocks[1][1][0] == "sft_loss('tokens') reads prompt/padding positions (NaN and 1e4 there; 0 · NaN = NaN): " \
                              "expected 2, as without them, got nan"
    assert blocks[1][1][1].startswith("test_sft_loss_rejects_an_unknown_normalize: sft_loss(normalize='mean') ")
    assert blocks[1][1][-1] == \
        f"the whole traceback: python -m pytest {ex.ANSWER_KEY}::test_sft_loss_ignores_masked_positions_exactly"
    assert not any("Traceback" in line or line.startswith("E ") for line in checked.stdout.splitlines())
    assert blocks[6][0] == "exercise 6 (reverse_kl_reinforce): FAIL"
    assert blocks[6][1][:2] == [
        "needs exercise 2 (kl_estimators), not written yet: do exercise 2 first",
        "needs exercise 5 (rewards_to_go), which fails its check: do exercise 5 first (python exercises.py check 5)"]
    assert not any("not written yet" in line for line in blocks[6][1][2:]), "exercise 2 is named twice"
    assert blocks[9][0] == "exercise 9 (discriminator): FAIL"
    assert blocks[9][1][0] == \
        "needs exercise 5 (rewards_to_go), which fails its check: do exercise 5 first (python exercises.py check 5)"
    assert blocks[11] == ("exercise 11 (best_of_n_kl): PASS (2 tests)", [])


# -----------------------------------------------------------------------------
# each hint is enforced: a plausible wrong answer fails its check, and the check's first line names its cause

def copy_project(dst):
    """A copy of the project with every exercise written (the real tree's solutions)."""
    for rel in ex.project_files(ROOT):
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))


def plant(root, number, function, code):
    """Write `code` in place of whatever exercise `number`'s region inside def `function` holds, under root."""
    lines = read(root).split("\n")
    for r in ex.regions(root):
        defs = [re.match(r"\s*def (\w+)\(", line) for line in lines[:r.begin]]
        if r.number == number and [d[1] for d in defs if d][-1] == function:
            indent = ex.BEGIN.match(lines[r.begin - 1])[1]
            lines[r.begin:r.end - 1] = [indent + line if line else line
                                        for line in textwrap.dedent(code).strip("\n").split("\n")]
            with open(os.path.join(root, SOURCE), "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
            return
    raise AssertionError(f"exercise {number} has no region in {function}")


def copies(wrong):
    """The wrong answers grouped into as few copies as first fit gives: at most one per exercise in a copy, and
    none in an exercise that another planted one needs (its check would say to do that one first)."""
    groups = []
    for w in wrong:
        fit = [g for g in groups if all(w[0] != n and w[0] not in ex.BY_NUMBER[n].needs
                                        and n not in ex.BY_NUMBER[w[0]].needs for n, *_ in g)]
        if fit:
            fit[0].append(w)
        else:
            groups.append([w])
    return groups


def one_line_with_expected_and_got(line):
    """Whether a check's line states what was expected and what came back, in one line and in its own words (not
    a traceback, nor PyTorch's or Python's raw error)."""
    raw = re.match(r"(\w+Error|Traceback|E )", line) or "\n" in line
    return not raw and re.search(r"\bexpected\b.+\bgot\b", line) is not None


def test_one_line_with_expected_and_got_tells_a_message_from_a_raw_error():
    assert one_line_with_expected_and_got("kl_k1 must keep its gradient: expected a tensor that requires grad "
                                          "(its input does), got one that does not")
    assert not one_line_with_expected_and_got("element 0 of tensors does not require grad and does not have a grad_fn")
    assert not one_line_with_expected_and_got("RuntimeError: The size of tensor a (5) must match the size of "
                                              "tensor b (3) at non-singleton dimension 2 (expected 3, got 5)")
    assert not one_line_with_expected_and_got("plausible(τ = 2.0) on")


@teacher
@pytest.mark.slow
@pytest.mark.parametrize("group", copies(WRONG), ids=lambda g: "+".join(f"{n}.{f}" for n, f, *_ in g))
def test_a_wrong_answer_fails_its_check_naming_its_cause_first(group, tmp_path):
    """Every wrong answer of the teacher's WRONG, planted in a copy of the project (several in one copy, each in
    an exercise of its own): its check fails, and the first line under its verdict names the cause, in one line
    with what was expected and what came back; no line of the check is a traceback's."""
    copy_project(str(tmp_path))
    for number, function, code, _ in group:
        plant(str(tmp_path), number, function, code)
    checked = python(["exercises.py", "check", *(str(n) for n, *_ in group)], cwd=str(tmp_path))
    blocks = verdicts(checked.stdout)
    wrong = [f"exercise {n} ({function}): expected first {cause!r}, in one line with expected and got; "
             f"got {blocks.get(n)}"
             for n, function, _, cause in group
             if n not in blocks or not blocks[n][0].endswith(": FAIL") or cause not in blocks[n][1][0]
             or not one_line_with_expected_and_got(blocks[n][1][0])]
    assert not wrong, "\n".join(wrong) + "\n" + checked.stdout + checked.stderr
    assert not any("Traceback" in line or line.startswith("E ") for line in checked.stdout.splitlines())


@teacher
@pytest.mark.slow
@pytest.mark.parametrize("right", RIGHT, ids=lambda r: f"{r[0]}.{r[1]}")
def test_a_right_answer_in_another_form_passes_its_check(right, tmp_path):
    """The teacher's RIGHT answers, written otherwise than the solution tree (the plausibility floor in Li et al.'s
    own form), pass their checks."""
    number, function, code = right
    copy_project(str(tmp_path))
    plant(str(tmp_path), number, function, code)
    checked = python(["exercises.py", "check", str(number)], cwd=str(tmp_path))
    assert checked.returncode == 0 and ": PASS (" in verdicts(checked.stdout)[number][0], \
        checked.stdout + checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("blanked", [e.number for e in CODING])
def test_declared_needs_are_the_measured_dependencies(blanked, tmp_path):
    """Exercise `blanked` alone blanked: the checks that fail are those of the exercises that declare they
    need it, and each says first to do it."""
    copy = str(tmp_path / "copy")
    ex.make_student_copy(copy, [blanked])
    others = [e.number for e in CODING if e.number != blanked]
    checked = python(["exercises.py", "check", *map(str, others)], cwd=copy)
    blocks = verdicts(checked.stdout)
    assert sorted(blocks) == others, checked.stdout + checked.stderr
    failing = {n for n in others if blocks[n][0].endswith(": FAIL")}
    declared = {n for n in others if blanked in ex.BY_NUMBER[n].needs}
    assert failing == declared, \
        f"blanking exercise {blanked} fails the checks of {sorted(failing)}; declared: {sorted(declared)}"
    for n in failing:
        assert blocks[n][1][0] == f"needs exercise {blanked} ({ex.BY_NUMBER[blanked].name}), not written yet: " \
                                  f"do exercise {blanked} first", blocks[n]


# -----------------------------------------------------------------------------
# the pipeline in a student copy: every stage whose exercises are written runs

def blanked(number, name="f"):
    """A function whose body is exercise `number`'s sentinel, as if at line 2 of SOURCE."""
    namespace = {}
    exec(compile(f"def {name}(*args):\n    {ex.sentinel(ex.BY_NUMBER[number])}\n", os.path.join(ROOT, SOURCE),
                 "exec"), namespace)
    return namespace[name]


def test_not_written_names_the_exercise_and_the_line_that_raised_it():
    with pytest.raises(NotImplementedError) as raised:
        blanked(2)()
    assert ex.not_written(raised.value) == (f"exercise 2 (kl_estimators) is not written yet: {SOURCE}:2 raises "
                                           "NotImplementedError; see EXERCISES.md, then run: python exercises.py check 2")
    assert ex.not_written(NotImplementedError("aten::foo is not implemented for the MPS device")) is None
    assert ex.not_written(ValueError(str(raised.value))) is None


@pytest.mark.slow
def test_afd_mini_in_the_student_copy_stops_at_its_first_stage_in_one_line(student, tmp_path):
    """Every exercise blanked: pretrain needs exercise 1 (sft_loss). (afd_mini.py used to stop before any stage
    while any exercise was blanked, whichever the run needed.)"""
    out = tmp_path / "out"
    started = python(["afd_mini.py", "--quick", f"--out_dir={out}", "--progress=false", "--pretrain_steps=1",
                      "--cache=off"], cwd=student)
    said = (started.stdout + started.stderr).strip()
    assert started.returncode == 1 and said == (
        f"afd_mini: stage pretrain: exercise 1 (sft_loss) is not written yet: {SOURCE}:{sentinel_lines(student, 1)[0]} "
        "raises NotImplementedError; see EXERCISES.md, then run: python exercises.py check 1"), said
    assert not (out / "seed_0" / "pretrain.json").exists()


@pytest.mark.slow
def test_afd_mini_in_a_student_copy_runs_every_stage_whose_exercises_are_written(tmp_path):
    """Exercise 9 alone blanked: pretrain and sft (exercise 1) run, and rkl_seq stops the run at exercise 9, in one
    line."""
    copy, out = str(tmp_path / "copy"), tmp_path / "out"
    ex.make_student_copy(copy, [9])
    started = python(["afd_mini.py", "--quick", f"--out_dir={out}", "--progress=false", "--pretrain_steps=5",
                      "--sft_steps=5", "--rl_iters=1", "--cache=off"], cwd=copy)
    lines = started.stderr.strip().splitlines()
    assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
    assert [line.split(":")[0] for line in lines[:-1]] == ["seed 0 · pretrain", "seed 0 · sft"], lines
    assert lines[-1].startswith("afd_mini: stage rkl_seq: exercise 9 (discriminator) is not written yet: "
                                f"{SOURCE}:"), lines
    assert (out / "seed_0" / "sft.json").exists() and not (out / "seed_0" / "rkl_seq.json").exists()


def test_the_report_leaves_out_a_figure_whose_exercise_is_blanked(tmp_path, monkeypatch):
    """fig_intuition draws with generalized_jsd (exercise 13), which no stage needs: the report says so."""
    import figures
    import report
    from fake_metrics import fake_run
    monkeypatch.setattr(figures, "DPI", 40)
    monkeypatch.setattr(figures, "generalized_jsd", blanked(13, "generalized_jsd"))
    with open(report.write_report(str(tmp_path), [fake_run(0)]), encoding="utf-8") as f:
        text = f.read()
    assert f"- fig_intuition.png skipped: exercise 13 (generalized_jsd) is not written yet: {SOURCE}:2 " in text
    assert not (tmp_path / "fig_intuition.png").exists() and "](fig_intuition.png)" not in text
    assert (tmp_path / "fig_modes.png").exists() and "](fig_modes.png)" in text
