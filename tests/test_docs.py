"""The documentation stays true: every command, flag and file it names exists."""
import contextlib
import glob
import importlib
import importlib.util
import io
import os
import re

import pytest

import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# Paths that commands in the documents create, or that the user supplies: not files of the repository.
CREATED = ("save/", "data/", "my_images/", "/")


def document_text(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def command_lines(text: str) -> list[str]:
    """Shell commands in the text: code-block lines (continuations joined) and `inline code`."""
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        lines += [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]*)`", text)
    return lines


def flags_after(line: str, marker: str) -> list[str]:
    tail = line.split(marker, 1)[1]
    tail = re.split(r"[|;&]", tail)[0]
    return [token.split("=")[0] for token in tail.split() if re.fullmatch(r"--[a-zA-Z_][\w-]*(=\S*)?", token)]


def tool_options(module: str) -> str:
    """The --help text of a `python -m` tool."""
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    return help_text.getvalue()


def test_the_documents_exist_and_readme_is_the_short_front_door():
    assert {"README.md", "docs/training.md", "docs/deployment.md", "docs/results.md"} <= set(DOCUMENTS)
    assert len(document_text("README.md").encode()) <= 20_500
    readme = document_text("README.md")
    for doc in DOCUMENTS[1:]:
        assert doc in readme, f"README does not link {doc}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_python_module_command_exists_with_its_flags(document):
    commands = [line for line in command_lines(document_text(document)) if "python -m " in line]
    modules = {re.search(r"python -m ([\w.]+)", line).group(1) for line in commands}
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{document}: python -m {module} does not exist"
    for line in commands:
        module = re.search(r"python -m ([\w.]+)", line).group(1)
        if not module.startswith("tools."):
            continue
        options = tool_options(module)
        for flag in flags_after(line, module):
            assert re.search(rf"{re.escape(flag)}\b", options), f"{document}: {module} has no {flag}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_main_py_flag_exists(document):
    known = {option for action in main.build_parser()._actions for option in action.option_strings}
    for line in command_lines(document_text(document)):
        if "main.py" in line:
            unknown = [flag for flag in flags_after(line, "main.py") if flag not in known]
            assert not unknown, f"{document}: main.py has no {unknown} ({line.strip()})"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_repository_path_and_script_exists(document):
    text = document_text(document)
    paths = set(re.findall(r"(?<![\w/.-])((?:models|utils|tools|tests|docs|results|pretrained|\.ci)/[\w./-]*\w)", text))
    paths |= set(re.findall(r"(?<![\w/.-])([\w-]+\.sh)\b", text)) | {"main.py", "requirements.txt"}
    placeholder = re.compile(r"(^|/)[A-Z][A-Z_]+(/|$)")  # results/DATASET/NAME stands for many paths
    missing = [path for path in sorted(paths) if not path.startswith(CREATED) and not placeholder.search(path)
               and not os.path.exists(os.path.join(ROOT, path))]
    assert not missing, f"{document} names files that do not exist: {missing}"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the Markdown headings of a text: lower case, every character but letters, digits,
    spaces, '-' and '_' dropped, spaces turned into '-', a repeated anchor numbered -1, -2, ..."""
    anchors: set[str] = set()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        numbered, count = slug, 0
        while numbered in anchors:
            count += 1
            numbered = f"{slug}-{count}"
        anchors.add(numbered)
    return anchors


@pytest.mark.parametrize("document", [*DOCUMENTS, "pretrained/cifar10/README.md"])
def test_every_relative_link_reaches_its_file_and_heading(document):
    text = document_text(document)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(target)
        elif anchor and anchor not in heading_anchors(document_text(resolved)):
            broken.append(target)
    assert not broken, f"{document} links to missing files or headings: {broken}"


def test_ci_runs_the_test_command_readme_gives():
    readme_command = re.search(r"```bash\n(python3 -m venv .*pytest.*)\n```", document_text("README.md")).group(1)
    assert readme_command in document_text(".ci/run").splitlines()
