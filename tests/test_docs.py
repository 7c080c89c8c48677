"""The docs: the site builds in strict mode, the command-line reference is the commands' own definitions, and
every command the README and the guides show parses."""

import re
import shlex
import subprocess
import sys

import pytest

from mobile_vision_export.pipeline.cli_reference import COMMANDS, render
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PARSERS = {name: build for script, module, build in COMMANDS for name in (script, module) if name}
PARSERS["python -m mobile_vision_export"] = PARSERS["mobile-vision-export"]


def test_docs_build_in_strict_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_cli_reference_is_generated_and_complete():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert page == render(), "run: python -m mobile_vision_export.pipeline.cli_reference docs/reference/cli.md"
    for _, _, build in COMMANDS:
        for action in build()._actions:
            for flag in action.option_strings if action.dest != "help" else ():
                assert f"`{flag}`" in page, flag


def _commands(text: str) -> list[str]:
    """The project's commands in the page's shell blocks, continuation lines joined and comments dropped."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0].startswith(".venv/bin/"):
                    words[0] = words[0].removeprefix(".venv/bin/")
                if words[:2] == ["python", "-m"]:
                    words = [" ".join(words[:3]), *words[3:]]
                if words and words[0] in PARSERS:
                    found.append(words)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_parses(page):
    for words in _commands(page.read_text()):
        try:
            PARSERS[words[0]]().parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"{page.name}: {' '.join(words)} does not parse (exit {exc.code})")


def test_the_pages_show_commands():
    assert len(_commands((ROOT / "README.md").read_text())) >= 6
