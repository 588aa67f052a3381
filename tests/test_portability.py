"""What a class's laptops need: output in UTF-8 under any code page (console.py, and every text file opened with its
encoding), lab commands that bash and PowerShell both run, --device=auto never on the untested MPS path, and Python
3.10 or newer asked for in one line."""
import ast
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import afd_mini
import console
import exercises
import model
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "KL(β‖π) — π_SFT"   # what the summary prints: not one of β, ‖, π is in cp1252


# -----------------------------------------------------------------------------
# UTF-8 output

class Terminal(io.BytesIO):
    def isatty(self):
        return True


def test_a_redirected_cp1252_stream_is_switched_to_utf8():
    """Windows' cp1252, stdout redirected to a file (`python afd_mini.py > run.log`): printing the summary raised
    UnicodeEncodeError. utf8_stream makes that stream UTF-8."""
    with pytest.raises(UnicodeEncodeError):
        io.TextIOWrapper(io.BytesIO(), encoding="cp1252").write(TEXT)
    stream = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    assert console.utf8_stream(stream) is stream
    stream.write(TEXT)
    stream.flush()
    assert stream.buffer.getvalue().decode("utf-8") == TEXT


def test_a_cp1252_terminal_keeps_its_encoding_and_replaces_what_it_cannot_show():
    stream = console.utf8_stream(io.TextIOWrapper(Terminal(), encoding="cp1252"))
    stream.write(TEXT)
    stream.flush()
    assert stream.encoding == "cp1252" and stream.buffer.getvalue() == b"KL(???) \x97 ?_SFT"


def test_utf8_and_encodingless_streams_are_left_as_they_are():
    utf8 = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert console.utf8_stream(utf8).errors == "strict"
    text = io.StringIO()
    assert console.utf8_stream(text) is text and console.utf8_stream(None) is None


def default_encoding_calls(source):
    """The line numbers of the calls in Python source that read or write text in the platform's default encoding
    (cp1252 on Windows): open() in a text mode, Path.read_text and write_text, subprocess's text=True (or
    universal_newlines=True), none of them with an encoding."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name == "open" and isinstance(node.func, ast.Name):
            mode = node.args[1] if len(node.args) > 1 else keywords.get("mode")
            if not (isinstance(mode, ast.Constant) and "b" in mode.value):
                yield node.lineno
        elif (name == "read_text" and not node.args) or (name == "write_text" and len(node.args) < 2):
            yield node.lineno
        elif any(isinstance(keywords.get(k), ast.Constant) and keywords[k].value is True
                 for k in ("text", "universal_newlines")):
            yield node.lineno


def test_every_text_file_the_project_opens_names_its_encoding():
    """report.md was written in the default encoding: cp1252 on Windows, which cannot write π. Every module that
    runs on a student's laptop (the tests excepted) names the encoding of every text it reads or writes."""
    planted = ('open(p, "w")\nopen(p)\nPath(p).read_text()\nPath(p).write_text(s)\nrun(c, text=True)\n'
               'open(p, "rb")\nopen(p, "w", encoding="utf-8")\nPath(p).write_text(s, encoding="utf-8")\n'
               'run(c, capture_output=True, encoding="utf-8")\n')
    assert list(default_encoding_calls(planted)) == [1, 2, 3, 4, 5], "the check has no teeth"
    found = []
    for rel in exercises.project_files(ROOT):
        if rel.endswith(".py") and not rel.startswith("tests/"):
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                found += [f"{rel}:{line}" for line in default_encoding_calls(f.read())]
    assert not found, "text read or written in the platform's encoding (give encoding=\"utf-8\"): " + ", ".join(found)


# -----------------------------------------------------------------------------
# the lab's commands

def shell_specific(text):
    """Each line of the markdown text's code blocks that bash and PowerShell do not run alike, with why: anything
    but one plain `python ...` command (no &&, &, ;, |, redirection, subshell, line continuation)."""
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            special = re.search(r"[&;|<>()`\\]", line)
            if not line.startswith("python "):
                yield f"{line!r}: not a python command"
            elif special:
                yield f"{line!r}: {special[0]!r} means something else in one of the shells"


def test_the_lab_commands_run_in_bash_and_powershell():
    """The lab used bash's `( ... ) > runs.log 2>&1 &` and && chains, which PowerShell does not run: the session
    plan's command blocks are plain python commands, one a line."""
    planted = "```bash\n(python afd_mini.py && python afd_mini.py --q=0.5) > runs.log 2>&1 &\n```\n" \
              "```\npython afd_mini.py --seed=K --out_dir=runs/K\npython afd_mini.py > runs.log\n```\n"
    assert len(list(shell_specific(planted))) == 2, "the check has no teeth"
    path = os.path.join(ROOT, "docs", "TEACHING.md")
    if not os.path.exists(path):
        pytest.skip("no docs/TEACHING.md (a student copy)")
    with open(path, encoding="utf-8") as f:
        plan = f.read().split("## Session plan")[1].split("\n## ")[0]
    assert plan.count("python afd_mini.py --seed=K") >= 2, "test has no teeth: the lab's commands are gone"
    problems = list(shell_specific(plan))
    assert not problems, "docs/TEACHING.md's session plan:\n" + "\n".join(problems)


# -----------------------------------------------------------------------------
# the device

@pytest.mark.parametrize("cuda, mps, auto", [(False, True, "cpu"), (True, True, "cuda"), (False, False, "cpu")])
def test_auto_picks_cuda_else_the_cpu_never_mps(monkeypatch, cuda, mps, auto):
    """Every Apple-silicon laptop has MPS, whose path has never run: auto takes it only if asked, --device=mps."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert model.get_device("auto").type == auto
    if mps:
        assert model.get_device("mps").type == "mps"
    else:
        with pytest.raises(ValueError, match="'mps' is unknown or unavailable here; use one of: auto, "):
            model.get_device("mps")


@pytest.mark.parametrize("device", ["mps", "auto"])
def test_a_run_on_mps_says_in_one_line_that_the_path_is_untested(tmp_path, monkeypatch, capsys, device):
    """On a Mac (MPS there, no CUDA), --device=mps prints MPS_UNTESTED once; auto runs on the CPU, without it. The
    stages are left out (run_seeds stops at once, as --stop_after does)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(runner, "run_seeds", lambda *args: None)
    assert afd_mini.main([f"--device={device}", "--quick", f"--out_dir={tmp_path}"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == ([model.MPS_UNTESTED] if device == "mps" else []), lines
    assert "--device=mps is untested" in model.MPS_UNTESTED


# -----------------------------------------------------------------------------
# the Python version

CHECKED = ["afd_mini.py", "exercises.py"]   # the commands a student runs first


@pytest.mark.parametrize("path", CHECKED)
def test_the_version_check_comes_first_and_parses_on_python_3_9(path):
    """On 3.9 the checks passed, then the pipeline died after SFT (zip(strict=True)). The check must run there: the
    file parses as Python 3.9, and nothing but its docstring and `import sys` comes before it."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), feature_version=(3, 9))
    before = []
    for node in tree.body:
        if isinstance(node, ast.If) and "sys.version_info < (3, 10)" in ast.unparse(node.test):
            break
        before.append(ast.unparse(node) if not isinstance(node, ast.Expr) else "docstring")
    else:
        pytest.fail(f"{path} does not check sys.version_info < (3, 10)")
    assert before == ["docstring", "import sys"], before


@pytest.mark.slow
@pytest.mark.parametrize("path", CHECKED)
def test_python_3_9_is_refused_in_one_line_with_exit_status_2(path):
    code = ("import runpy, sys; sys.version_info = (3, 9, 0, 'final', 0); sys.argv = [sys.argv[1]]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, path)], capture_output=True,
                         encoding="utf-8", timeout=120)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.splitlines() == ["afd-mini needs Python 3.10 or newer; this is Python 3.9.0"], res.stderr
