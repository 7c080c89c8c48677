"""docs/reference/cli.md, made from the commands' own argparse definitions so the reference cannot drift:
`python -m mobile_vision_export.pipeline.cli_reference docs/reference/cli.md` writes it, and a test checks the
committed page is what this makes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobile_vision_export.pipeline import arm_setup, bundle, diagnose, evaluate, export, profile, zoo

# (the installed script, the module form, its parser)
COMMANDS = (
    ("mobile-vision-export", "python -m pipeline.export", export.build_parser),
    ("mve-evaluate", "python -m pipeline.evaluate", evaluate.build_parser),
    ("mve-profile", "python -m pipeline.profile", profile.build_parser),
    ("mve-diagnose", "python -m pipeline.diagnose", diagnose.build_parser),
    ("mve-bundle", "python -m pipeline.bundle", bundle.build_parser),
    ("mve-arm-setup", "python -m pipeline.arm_setup", arm_setup.build_parser),
    (None, "python -m pipeline.zoo", zoo.build_parser),
)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    names = ", ".join(f"`{name}`" for name in action.option_strings) or f"`{action.dest}`"
    if action.nargs == 0:
        return names
    if action.choices is not None and not isinstance(action.choices, range):
        return f"{names} `{{{','.join(map(str, action.choices))}}}`"
    return f"{names} `{action.metavar or action.dest.upper()}`"


def _shown(value: object) -> str:
    """A default as the reader's machine would have it: the home folder as ~."""
    if isinstance(value, Path) and value.is_relative_to(Path.home()):
        return f"~/{value.relative_to(Path.home())}"
    return str(value)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    return f"`{_shown(action.default)}`"


def render() -> str:
    lines = [
        "# Command-line reference",
        "",
        "Made from the commands' own definitions (`python -m mobile_vision_export.pipeline.cli_reference`); every "
        "command also prints this with `--help`.",
        "",
    ]
    for script, module, build in COMMANDS:
        parser = build()
        lines += [f"## {script or module}", ""]
        if script:
            lines += [f"Also `{module}`.", ""]
        lines += [_cell(parser.description.splitlines()[0] if parser.description else ""), ""]
        lines += ["| argument | default | what it does |", "|---|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            help_text = (action.help or "") % {"default": _shown(action.default), "prog": script or module}
            lines.append(f"| {_flag(action)} | {_default(action)} | {_cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(render())
