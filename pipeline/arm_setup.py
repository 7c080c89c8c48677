"""mve-arm-setup: install what ARM emulation needs into a cache folder (reused when present); see
profiling.arm_setup."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobile_vision_export.errors import UserError
from mobile_vision_export.pipeline.cli import Parser, add_common_flags, prog_name, run_command
from mobile_vision_export.profiling.arm_setup import default_cache, setup


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: _main(argv), argv, "stopped the ARM set-up; run it again to finish")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=prog_name("mve-arm-setup"), description=__doc__)
    add_common_flags(parser)
    parser.add_argument("--cache", type=Path, default=default_cache(), help="cache folder (default %(default)s)")
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup(args.cache)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
