"""Paths once: a stage module names its inputs and outputs as ``IN_*`` / ``OUT_*`` constants, and dvc.yaml must
declare exactly those — an input the code reads that is not a dep (DVC would not re-run on its change), or an
output it writes that is not an out (DVC would not version it), fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from skinflow.lineage.code_deps import command_modules, covered, module_file

REPO = Path(__file__).resolve().parents[2]


def _declares(path: str, declared: list[str]) -> bool:
    """``path`` is covered by a declared path; a ``{run}`` in it (a per-seed run name) stands for one path segment."""
    if "{run}" not in path:
        return covered(path, declared)
    pattern = re.escape(path).replace(re.escape("{run}"), "[^/]+")
    return any(re.fullmatch(pattern, d) for d in declared)


def _constants(module: str) -> dict[str, str]:
    """``{NAME: path}`` for the module's top-level ``IN_*``/``OUT_*`` constants (strings or ``Path("...")``)."""
    tree = ast.parse((REPO / module_file(REPO, module)).read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name, value = node.targets[0].id, node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Path" and value.args:
            value = value.args[0]
        if name.startswith(("IN_", "OUT_")) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            found[name] = value.value
    return found


@pytest.fixture(scope="module")
def stages() -> list[tuple[str, str, list[str], list[str]]]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return [(stage.addressing, command_modules(stage.cmd)[0], [str(d.def_path) for d in stage.deps],
                 [str(o.def_path) for o in stage.outs]) for stage in repo.index.stages if getattr(stage, "cmd", None)]


def test_every_named_input_is_a_dep_and_every_named_output_an_out(stages):
    wrong = []
    for name, module, deps, outs in stages:
        for constant, path in _constants(module).items():
            declared = deps if constant.startswith("IN_") else outs
            if not _declares(path, declared):
                wrong.append(f"{name}: {module}.{constant} = {path!r} is not among its dvc.yaml "
                             f"{'deps' if constant.startswith('IN_') else 'outs'}")
    assert not wrong, "\n".join(wrong)


def test_stages_with_fixed_outputs_name_every_out_they_declare(stages):
    """The reverse, for modules whose outputs do not depend on a variant name: each dvc.yaml out is a path the
    module names (or lies under one), so a path is spelled in the module and checked here, nowhere else."""
    checked, wrong = 0, []
    for name, module, _, outs in stages:
        named = [p for c, p in _constants(module).items() if c.startswith("OUT_")]
        if not named:
            continue
        checked += 1
        wrong += [f"{name}: out {out} is named by no OUT_* constant of {module}" for out in outs
                  if not any(_declares(n, [out]) or covered(out, [n]) for n in named)
                  and not out.startswith("metrics/timing/")]
    assert checked >= 8 and not wrong, "\n".join(wrong)
