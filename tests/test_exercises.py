"""
Tests of exercises.py: the student copy it writes, the checks it runs, and the pointer afd_mini.py shows.

The student copy (every coding exercise blanked) is written once, by the command a teacher runs, and shared.
The subprocess tests run pytest in it, in a copy with a mistake, or in the real tree (four runs of about 4 s,
and a start of afd_mini.py that should stop at once); the rest read files.
"""
import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import exercises as ex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODING = [e for e in ex.EXERCISES if e.coding]
SOURCE = ex.SOURCES[0]


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


def test_exercises_md_has_every_check_command_and_every_run():
    text = read(ROOT, "EXERCISES.md")
    for e in ex.EXERCISES:
        assert re.search(rf"^## {e.number}\. ", text, re.M), f"EXERCISES.md has no section for exercise {e.number}"
        wanted = f"python exercises.py check {e.number}" if e.coding else e.command
        assert wanted in text, f"EXERCISES.md does not show `{wanted}`"


def test_experiment_runs_are_valid_afd_mini_options_off_the_default():
    import afd_mini
    default = afd_mini.parse_args([])
    for e in ex.EXERCISES:
        if not e.coding:
            command = e.command.split()
            assert command[:2] == ["python", "afd_mini.py"], e.command
            cfg = afd_mini.parse_args(command[2:])   # raises on an unknown option or a bad value
            changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(default, k)} - {"out_dir"}
            assert changed, f"exercise {e.number} runs the default configuration: {e.command}"


# -----------------------------------------------------------------------------
# the student copy

def test_student_copy_blanks_the_solutions_and_changes_nothing_else(student):
    files = ex.project_files(ROOT)
    assert "exercises.py" in files and "EXERCISES.md" in files
    for rel in files:
        assert os.path.isfile(os.path.join(student, rel)), f"{rel} is missing from the student copy"
        if rel != SOURCE:
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
    assert outside(copy, copy_regions) == outside(real, real_regions), "a line outside the regions changed"
    copied = {l.strip() for l in copy}
    for r in real_regions:
        for line in real[r.begin:r.end - 1]:
            assert line.strip() not in copied, f"exercise {r.number}'s solution survives: {line.strip()}"


def test_student_copy_refuses_a_directory_in_use(student):
    refused = python(["exercises.py", "student", student], cwd=ROOT)
    assert refused.returncode == 2 and "not empty" in refused.stderr


def test_first_unfinished_points_at_the_lowest_blanked_exercise(student, tmp_path):
    assert ex.first_unfinished(ROOT) is None
    assert ex.first_unfinished() is None   # default: the tree exercises.py is in
    message = ex.first_unfinished(student)
    assert "\n" not in message
    assert f"exercise 1 (sft_loss) is not written yet: {SOURCE}:{sentinel_lines(student, 1)[0]} " in message
    assert message.endswith("python exercises.py check 1")
    ex.make_student_copy(str(tmp_path / "some"), [5, 2])   # a teacher hands out exercises 2 and 5 only
    assert "exercise 2 (kl_estimators)" in ex.first_unfinished(str(tmp_path / "some"))
    assert sorted(n for n, _, _ in ex.sentinels(str(tmp_path / "some"))) == [2, 2, 5]


# -----------------------------------------------------------------------------
# the checks, run as a student runs them

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


def test_check_fails_each_exercise_in_the_student_copy_naming_it(student):
    checked = python(["exercises.py", "check"], cwd=student)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    blocks = verdicts(checked.stdout)
    assert sorted(blocks) == [e.number for e in CODING]
    for e in CODING:
        head, details = blocks[e.number]
        assert head == f"exercise {e.number} ({e.name}): FAIL"
        own = {f"not written yet: {SOURCE}:{n} raises NotImplementedError" for n in sentinel_lines(student, e.number)}
        assert details and set(details) <= own, f"exercise {e.number}: {details}"


def test_check_passes_every_exercise_in_the_real_tree():
    checked = python(["exercises.py", "check"], cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    blocks = verdicts(checked.stdout)
    assert sorted(blocks) == [e.number for e in CODING]
    for e in CODING:
        assert blocks[e.number] == (f"exercise {e.number} ({e.name}): PASS ({len(e.tests)} test"
                                    + "s" * (len(e.tests) > 1) + ")", [])


def test_check_names_the_broken_equation_and_the_missing_exercise(tmp_path):
    copy = str(tmp_path / "copy")
    ex.make_student_copy(copy, [2])
    text = read(copy)   # exercise 1 written wrong: x * mask lets the NaN of padding through
    wrong = text.replace("nll = -_response(logp, mask).sum()", "nll = -(logp * mask).sum()")
    assert wrong != text
    with open(os.path.join(copy, SOURCE), "w", encoding="utf-8") as f:
        f.write(wrong)
    checked = python(["exercises.py", "check", "1", "6", "11"], cwd=copy)
    assert checked.returncode == 1
    blocks = verdicts(checked.stdout)
    assert blocks[1][0] == "exercise 1 (sft_loss): FAIL"
    assert "test_sft_loss_ignores_masked_positions_exactly: sft_loss('tokens') reads prompt/padding positions " \
           "(NaN and 1e4 there; 0 · NaN = NaN)" in blocks[1][1]
    assert f"the whole traceback: python -m pytest {ex.ANSWER_KEY}::test_sft_loss_ignores_masked_positions_exactly" \
        in blocks[1][1]
    assert not any("Traceback" in line or line.startswith("E ") for line in checked.stdout.splitlines())
    assert blocks[6][0] == "exercise 6 (reverse_kl_reinforce): FAIL"
    assert any("uses exercise 2 (kl_estimators), not written yet" in line for line in blocks[6][1])
    assert blocks[11] == ("exercise 11 (best_of_n_kl): PASS (2 tests)", [])


def test_afd_mini_in_the_student_copy_stops_with_a_pointer(student, tmp_path):
    out = str(tmp_path / "out")
    # --pretrain_steps=1 bounds the cost should the pre-flight be missing: SFT then crashes after one step
    started = python(["afd_mini.py", "--quick", f"--out_dir={out}", "--progress=false", "--pretrain_steps=1"],
                     cwd=student)
    said = (started.stdout + started.stderr).strip()
    assert started.returncode != 0
    assert "Traceback" not in said and len(said.splitlines()) == 1, said
    assert "exercise 1 (sft_loss)" in said and "python exercises.py check 1" in said
    assert not os.path.exists(out), "afd_mini.py started working before it checked the exercises"
