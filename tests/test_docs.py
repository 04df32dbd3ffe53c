"""The README and docs/ stay true to the code: their links lead somewhere, their `herd` commands
name real subcommands and options, the scripts they run exist, their code blocks parse."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from herd.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """Each fenced block of that language in the page, with the line its text starts on."""
    found, lines = [], page.read_text().splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == f"```{language}":
            start = number + 1
        elif start is not None and line.strip() == "```":
            found.append((start, "\n".join(lines[start - 1:number - 1]) + "\n"))
            start = None
    return found


def prose(page: Path) -> str:
    """The page without its fenced blocks (blank lines in their place), where a link is a link."""
    return re.sub(r"^```.*?^```", lambda block: "\n" * block[0].count("\n"), page.read_text(),
                  flags=re.DOTALL | re.MULTILINE)


def anchors(page: Path) -> list[str]:
    """The anchors a Markdown renderer gives the page's headings: lower case, punctuation dropped,
    spaces to hyphens, repeats numbered."""
    found, seen = [], {}
    for heading in re.findall(r"^#+ (.+)$", prose(page), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        found.append(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    wrong = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):  # a web address: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            wrong.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(file):
            wrong.append(f"{target}: {file.name} has no heading '#{anchor}'")
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


def herd_commands(page: Path):
    """Each `herd ...` command line in the page's bash blocks, as (line number, arguments after
    `herd`), continuation lines joined and comments, pipes and `&&` chains split off."""
    for start, text in blocks(page, "bash"):
        lines = text.split("\n")
        number = 0
        while number < len(lines):
            first, line = number, lines[number]
            while line.endswith("\\") and number + 1 < len(lines):
                number += 1
                line = line[:-1] + " " + lines[number]
            number += 1
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split, lexer.commenters = True, "#"
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token not in ("|", "||", "&", "&&", ";"):
                    command.append(token)
                    continue
                while command and re.match(r"[A-Z_]+=", command[0]):  # VAR=value herd ...
                    command.pop(0)
                if command[:1] == ["herd"]:
                    yield start + first, command[1:]
                command = []


def is_group(command) -> bool:
    return hasattr(command, "commands")  # typer's own click, or click itself: a group has commands


def inline_herd_commands(page: Path):
    """Each `herd ...` code span in the page's prose, as (line number, arguments after `herd`)."""
    text = prose(page)
    for span in re.finditer(r"`herd ([^`]+)`", text):
        yield text.count("\n", 0, span.start()) + 1, shlex.split(span[1])


def resolve(args: list[str]):
    """The (click) command the arguments name, the subcommand path, and the arguments left."""
    command, path = typer.main.get_command(app), []
    while is_group(command) and args and args[0] in command.commands:
        path.append(args[0])
        command, args = command.commands[args[0]], args[1:]
    return command, path, args


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_herd_command_names_a_real_subcommand_and_options(page):
    wrong, checked = [], 0
    for line, args in [*herd_commands(page), *inline_herd_commands(page)]:
        command, path, rest = resolve(args)
        where = f"{page.name}:{line}: herd {' '.join(path)}"
        if is_group(command):
            wrong.append(f"{where}: no subcommand {rest[:1]}")
            continue
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for token in rest:
            flag = token.strip("[]").split("=", 1)[0]  # '[--folds' in a usage line, '--out=DIR'
            if re.match(r"--?[a-zA-Z]", flag) and flag not in options:
                wrong.append(f"{where}: no option {flag}")
        checked += 1
    assert not wrong, "\n".join(wrong)
    if page.name in ("README.md", "serving.md", "collection.md", "feedback.md"):
        assert checked, f"{page.name} shows no herd command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_scripts_the_docs_run_exist(page):
    named = re.findall(r"python (benchmarks/[\w/]+\.py)", page.read_text())
    missing = sorted({script for script in named if not (ROOT / script).exists()})
    assert not missing, f"{page.name} runs scripts that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_and_yaml_blocks_parse(page):
    for line, text in blocks(page, "python"):
        compile(text, f"{page.name}:{line}", "exec")
    for line, text in blocks(page, "yaml"):
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as e:
            pytest.fail(f"{page.name}:{line}: the YAML block does not parse: {e}")


def test_the_checks_catch_a_wrong_command_and_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](#title) [b](#nothing) [c](absent.md) `herd select\n--nope`\n\n"
                    "```bash\nherd eval DATA --folds 3 \\\n  --no-such-flag  # comment --ignored\n"
                    "herd nosuch --x\nHERD_DATA=. herd train -o r/ && herd route r/ 'text'\n```\n")
    assert anchors(page) == ["title"]
    commands = list(herd_commands(page))
    assert commands == [(7, ["eval", "DATA", "--folds", "3", "--no-such-flag"]), (9, ["nosuch", "--x"]),
                        (10, ["train", "-o", "r/"]), (10, ["route", "r/", "text"])]
    assert list(inline_herd_commands(page)) == [(3, ["select", "--nope"])]
    assert resolve(["pool", "from-litellm", "x.yaml"])[1] == ["pool", "from-litellm"]
    assert is_group(resolve(["nosuch"])[0])
    with pytest.raises(AssertionError, match=r"#nothing.*absent\.md: no such file"):
        test_every_relative_link_leads_to_a_file_and_heading(page)
    with pytest.raises(AssertionError, match=r"page.md:7: herd eval: no option --no-such-flag\n.*no subcommand.*\n.*:3: herd select: no option --nope"):
        test_every_herd_command_names_a_real_subcommand_and_options(page)


def test_ci_reads_the_setup_and_test_commands_from_the_readme():
    """`.ci/run` installs and tests with the first line under the README's markers; run its own
    reader on the README as it is."""
    script = (ROOT / ".ci" / "run").read_text()
    reader = re.search(r"^readme_command\(\) \{.*?^\}$", script, flags=re.DOTALL | re.MULTILINE)[0]

    def command(mark: str) -> str:
        return subprocess.run(["bash", "-c", f"{reader}\nreadme_command {mark}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    setup, tests = command("setup"), command("test")
    assert "pip install -e '.[" in setup and setup.endswith("herd demo")
    assert tests == "python -m pytest -n 2 --dist loadfile"
    # -n comes from pytest-xdist: the extra the setup line installs must bring it.
    extras = re.search(r"pip install -e '\.\[([\w,]+)\]'", setup)[1].split(",")
    test_extra = re.search(r"^test = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.DOTALL | re.MULTILINE)[1]
    assert "test" in extras and '"pytest-xdist>=' in test_extra


def test_the_module_map_names_every_module():
    """docs/ARCHITECTURE.md's map stays whole: each module of src/herd is named there (a package's
    modules by file name, beside the package)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    package = ROOT / "src" / "herd"
    unnamed = []
    for module in sorted(package.rglob("*.py")):
        path = module.relative_to(package)
        if module.name in ("__init__.py", "__main__.py"):
            continue
        named = f"`{path}`" in text if len(path.parts) == 1 else f"`{path.parts[0]}/`" in text and f"`{path.name}`" in text
        if not named:
            unnamed.append(str(path))
    assert not unnamed, f"docs/ARCHITECTURE.md's module map does not name {unnamed}: add a line for each"


def test_the_readme_shows_every_command():
    """A newcomer meets every `herd` command in the README, with its page in docs/ a link away."""
    def names(command, prefix=""):
        for name, sub in command.commands.items():
            yield from names(sub, f"{prefix}{name} ") if is_group(sub) else [f"{prefix}{name}"]

    readme = ROOT / "README.md"
    shown = [args for _, args in [*herd_commands(readme), *inline_herd_commands(readme)]]
    missing = [name for name in names(typer.main.get_command(app))
               if not any(args[:len(name.split())] == name.split() for args in shown)]
    assert not missing, f"README.md shows no example of: {', '.join(f'herd {name}' for name in missing)}"
