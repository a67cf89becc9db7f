"""Shared plumbing for stage entry points: the --params/--set options and loading the stage's section from
them, and a progress switch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TypeVar

from skinflow.config import Section, load_section

S = TypeVar("S", bound=Section)


def params_parser(section: str, **kwargs) -> argparse.ArgumentParser:
    """A parser with the ``--params`` and ``--set`` options every stage takes; a stage adds its own arguments."""
    parser = argparse.ArgumentParser(**{"description": f"SkinFlow stage reading params section '{section}'", **kwargs})
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of section '{section}' (repeatable), e.g. --set seed=3")
    return parser


def section_from_args(section: str, model: type[S], args: argparse.Namespace, first: list[str] | tuple[str, ...] = ()) -> S:
    """The section from ``args.params`` with ``first`` overrides, then the user's ``--set`` ones (theirs win)."""
    return load_section(section, model, args.params, [*first, *args.overrides])


def stage_config(section: str, model: type[S], argv: list[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> tuple[S, argparse.Namespace]:
    """Parse ``argv`` (with ``parser`` when the stage has arguments of its own) and load the stage's section."""
    args = (parser or params_parser(section)).parse_args(argv)
    return section_from_args(section, model, args), args


def show_progress() -> bool:
    """Progress bars on an interactive terminal, off in CI logs unless forced."""
    if os.environ.get("SKINFLOW_PROGRESS") is not None:
        return os.environ["SKINFLOW_PROGRESS"] not in ("0", "false", "")
    return sys.stderr.isatty()
