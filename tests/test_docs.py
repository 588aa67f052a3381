"""
The teaching documents point only at what exists: options, stages and methods, names of the code, files, and
README sections.

dangling_references(text, folder) is the check, for any markdown file of the project; the test runs it on
EXERCISES.md and on docs/TEACHING.md once that exists. Its rules:
- every --option (in code blocks too) is a field of afd_mini.Config (or --help), but for torchrun's own
  options before the script;
- in inline code (`...`): every word with a file extension, or a path that starts in a folder of the project,
  is a file or folder of the project (relative to the root or to the document's folder) or a file the
  pipeline writes (named in the source of afd_mini.py or report.py), after dropping a <placeholder>/ prefix;
  every snake_case name, and a code span that is one bare word (a stage or method name such as `js`), is a
  known name: an option, a stage, a policy or reward model of methods.py, a name, function parameter or
  non-docstring string (a metrics key) of the project's modules, a file's stem, or a name of torch,
  torch.nn.functional, Python's builtins or keywords;
- a README section named in quotes (README ("Results"), README, "Running it") is a heading of README.md;
- a markdown link [text](path#anchor) that is not a web address points to a file, and its anchor to one of
  that file's headings (GitHub's anchors).
Guards against the drift it was written for: an option renamed, a stage or method removed, a README section
renamed.
"""
import ast
import builtins
import dataclasses
import functools
import inspect
import keyword
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["EXERCISES.md", "docs/TEACHING.md"]
MODULES = ["objectives", "afd_mini", "common", "evaluation", "report", "figures", "model", "sampling", "methods", "cli",
           "exercises", "data.world"]
OUTPUT_WRITERS = ["afd_mini.py", "report.py"]   # a file named in their source is one a run writes
EXTENSIONS = ("py", "md", "png", "json", "txt", "pt", "ini", "tiktoken", "csv")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def headings(path):
    """The headings of a markdown file, without their #s."""
    return [m[1].strip() for m in re.finditer(r"^#+ (.+)$", read(path), re.M)]


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def strings(module):
    """The identifiers in a module's string constants, docstrings left out (a metrics key, a stage's name)."""
    tree = ast.parse(inspect.getsource(module))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {word for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs for word in re.findall(r"\w+", node.value)}


@functools.cache
def known_names():
    import importlib

    import torch
    import torch.nn.functional as F

    import afd_mini
    import methods
    names = {f.name for f in dataclasses.fields(afd_mini.Config)} | set(afd_mini.STAGES)
    names |= {p.name for p in methods.POLICIES} | {r.name for r in methods.REWARD_MODELS}
    for name in MODULES:
        module = importlib.import_module(name)
        names |= set(dir(module)) | strings(module)
        for value in vars(module).values():   # its functions' and its classes' methods' parameters
            for f in [value, *(vars(value).values() if inspect.isclass(value) else [])]:
                if inspect.isfunction(f) and f.__module__ == module.__name__:
                    names |= set(inspect.signature(f).parameters)
    files = project_files()
    names |= {os.path.splitext(os.path.basename(f))[0] for f in files}
    return names | set(dir(torch)) | set(dir(torch.Tensor)) | set(dir(F)) | set(dir(builtins)) | set(keyword.kwlist)


def project_files():
    import exercises
    return exercises.project_files(ROOT)


def options():
    import afd_mini
    return {f.name for f in dataclasses.fields(afd_mini.Config)} | {"help"}


def dangling_references(text, folder="."):
    """Every reference of a markdown text (a file in `folder`, relative to the project root) to something that
    does not exist, one line each; [] when there is none."""
    problems = []
    launcher = re.sub(r"\btorchrun((?:\s+--[\w-]+(?:=\S+)?)+)", "torchrun", text)   # torchrun's own options
    for name in sorted(set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", launcher)) - options()):
        problems.append(f"--{name}: not an option of afd_mini.py (a field of afd_mini.Config)")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)   # fenced code blocks: options only
    known, files = known_names(), set(project_files())
    folders = {f.split("/")[0] for f in files if "/" in f}
    outputs = "\n".join(read(f) for f in OUTPUT_WRITERS)

    def exists(path):   # a file or a folder of the project
        return os.path.normpath(path) in files or any(f.startswith(path.rstrip("/") + "/") for f in files)

    for span in dict.fromkeys(re.findall(r"`([^`\n]+)`", prose)):
        for word in re.findall(r"[\w<>./-]+", span):
            if word.startswith("-"):   # an option: checked above
                continue
            if re.search(rf"\w\.({'|'.join(EXTENSIONS)})$", word) or "/" in word and word.split("/")[0] in folders:
                path = re.sub(r"^(<[^>]*>/)+", "", word)
                if not (exists(path) or exists(os.path.join(folder, path)) or f'"{path}"' in outputs):
                    problems.append(f"`{span}`: no file {path} in the project, nor one a run writes")
                continue
            for name in re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", word):   # snake_case
                if name not in known:
                    problems.append(f"`{span}`: {name} is not an option, stage, method or name of the code")
        if re.fullmatch(r"[a-z][a-z0-9]*", span) and span not in known:
            problems.append(f"`{span}`: not a stage, method or name of the code")
    readme = headings("README.md")
    for name in re.findall(r'README\W{0,3}"([^"]+)"', text):
        name = " ".join(name.split())
        if name not in readme:
            problems.append(f'README "{name}": no such section of README.md (its headings: {" | ".join(readme)})')
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        path = os.path.normpath(os.path.join(folder, path)) if path else None
        if path is not None and not exists(path):
            problems.append(f"({target}): no file {path}")
        elif fragment and path and path.endswith(".md") and fragment not in map(anchor, headings(path)):
            problems.append(f"({target}): no heading of {path} has the anchor #{fragment}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_teaching_documents_point_only_at_what_exists(doc):
    if not os.path.exists(os.path.join(ROOT, doc)):
        pytest.skip(f"{doc} does not exist yet")
    problems = dangling_references(read(doc), os.path.dirname(doc) or ".")
    assert not problems, f"{doc}:\n" + "\n".join(problems)


def test_dangling_references_finds_each_kind():
    planted = """Run `python afd_mini.py --kl_coeff=1` and read `fig_bonn.png`, `objectives.py` and
`docs/NOWHERE.md`, `tests/`, `docs/fig_bon.png`, `docs/nothing/`. The stage `rkl_oracel` and the method
`jss` have gone; `sft` and `js_oracle` remain.
See README ("Results of a default run") and README ("Results"), [there](README.md#running-it),
[here](README.md#no-such-section) and [gone](docs/GONE.md).

```bash
python afd_mini.py --q=0.5 --nope=1
torchrun --standalone --nproc_per_node=2 afd_mini.py --seeds=2 --nnodes=2
```
"""
    problems = dangling_references(planted)
    for wanted in ["--kl_coeff", "--nope", "--nnodes", "fig_bonn.png", "docs/NOWHERE.md", "docs/nothing/", "rkl_oracel",
                   "`jss`", 'README "Results of a default run"', "#no-such-section", "docs/GONE.md"]:
        assert sum(wanted in p for p in problems) == 1, f"{wanted} not reported once: {problems}"
    assert len(problems) == 11, problems   # torchrun's own options before the script are not afd_mini's
