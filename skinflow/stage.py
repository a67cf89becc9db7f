"""Shared plumbing for stage entry points: params section + overrides, and a progress switch."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TypeVar

from skinflow.config import Section, load_section

S = TypeVar("S", bound=Section)


def stage_config(section: str, model: type[S], argv: list[str] | None = None) -> tuple[S, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=f"SkinFlow stage reading params section '{section}'")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a key of section '{section}' (repeatable), e.g. --set seed=3")
    args = parser.parse_args(argv)
    return load_section(section, model, args.params, args.overrides), args


def show_progress() -> bool:
    """Progress bars on an interactive terminal, off in CI logs unless forced."""
    if os.environ.get("SKINFLOW_PROGRESS") is not None:
        return os.environ["SKINFLOW_PROGRESS"] not in ("0", "false", "")
    return sys.stderr.isatty()
