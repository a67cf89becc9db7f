"""Code dependencies of DVC stages, read from the imports of the code each stage runs.

A stage's outputs depend on every in-repo file its command executes: the ``pipelines/`` module it
runs, every ``skinflow``/``pipelines`` module that imports (transitively, lazy imports inside
functions included, ``if TYPE_CHECKING:`` blocks excluded), the ``__init__.py`` of every package on
the way (Python runs them), and the data files those modules locate next to themselves through
``__file__`` (``synonyms.yaml``, ``equivalence.yaml``, ``taxonomies/``). :func:`missing_deps` names
what ``dvc.yaml`` fails to cover (a dep that is a folder covers the files under it), and
:func:`unused_deps` the code deps a stage no longer runs (they re-run it for nothing).

The ``skinflow.lineage run <stage> --`` wrapper in front of each command is not walked: it records
the run in the ledger and changes no output (its one effect on the child, ``PYTHONHASHSEED=0``, is a
constant), so editing the ledger code must not re-run the pipeline.

    python -m skinflow.lineage.code_deps [--check] [STAGE ...]
"""

from __future__ import annotations

import ast
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

IN_REPO_PACKAGES = ("skinflow", "pipelines")
WRAPPER = "skinflow.lineage"


@dataclass(frozen=True)
class StageCode:
    """One resolved stage (foreach/matrix items expanded): the modules it runs and its declared deps."""

    name: str
    modules: tuple[str, ...]
    deps: tuple[str, ...]


def module_file(root: Path, module: str) -> Path | None:
    """The file of an in-repo module (``a/b.py`` or ``a/b/__init__.py``), relative to ``root``."""
    if module.split(".")[0] not in IN_REPO_PACKAGES:
        return None
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the body never runs
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imported_modules(root: Path, path: Path, tree: ast.AST) -> set[str]:
    package = ".".join(path.with_suffix("").parts[:-1] if path.name != "__init__.py" else path.parent.parts)
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative import: resolve against this module's package
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        found.add(base)
        # `from pkg import name` imports pkg.name when it is a submodule.
        found.update(f"{base}.{alias.name}" for alias in node.names if module_file(root, f"{base}.{alias.name}"))
    return {m for m in found if module_file(root, m) is not None}


def _data_files(root: Path, path: Path, tree: ast.AST) -> set[Path]:
    """Files and folders next to a module that it names in a string and locates through ``__file__``."""
    if not any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(tree)):
        return set()
    beside = {p.name for p in (root / path.parent).iterdir() if p.suffix != ".py" and p.name != "__pycache__"}
    names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {path.parent / name for name in names & beside}


@lru_cache(maxsize=None)
def _parse(root: Path, path: Path) -> ast.AST:
    return ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))


def code_files(root: str | Path, modules: list[str] | tuple[str, ...]) -> list[str]:
    """Every in-repo file that running ``modules`` executes or reads at import, as sorted posix paths."""
    root = Path(root).resolve()
    seen_modules: set[str] = set()
    files: set[Path] = set()
    todo = [m for m in modules if module_file(root, m) is not None]
    while todo:
        module = todo.pop()
        if module in seen_modules:
            continue
        seen_modules.add(module)
        path = module_file(root, module)
        if (root / path).stat().st_size:  # an empty __init__.py runs nothing (and DVC warns on empty deps)
            files.add(path)
        tree = _parse(root, path)
        files |= _data_files(root, path, tree)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imported_modules(root, path, tree) - seen_modules)
    return sorted(p.as_posix() for p in files)


def command_modules(cmd: str) -> list[str]:
    """The in-repo modules a stage command runs (``python -m mod`` or ``python path.py``), the lineage
    wrapper's ``-- <command>`` unwrapped."""
    argv = shlex.split(cmd)
    if WRAPPER in argv and "--" in argv:
        argv = argv[argv.index("--") + 1:]
    modules = []
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            modules.append(argv[i + 1])
        elif arg.endswith(".py") and not arg.startswith("-"):
            modules.append(".".join(Path(arg).with_suffix("").parts))
    return [m for m in modules if m.split(".")[0] in IN_REPO_PACKAGES and m != WRAPPER]


def resolved_stages(root: str | Path = ".") -> list[StageCode]:
    """Every stage of ``root``'s dvc.yaml as DVC resolves it (foreach/matrix expanded, params interpolated)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [StageCode(stage.addressing, tuple(command_modules(stage.cmd or "")),
                          tuple(str(dep.def_path) for dep in stage.deps))
                for stage in repo.index.stages if getattr(stage, "cmd", None)]


def covered(path: str, deps: tuple[str, ...] | list[str]) -> bool:
    """Whether a dep names ``path`` or a folder above it."""
    parts = Path(path).parts
    return any(Path(d).parts == parts[: len(Path(d).parts)] for d in (dep.rstrip("/") for dep in deps))


def missing_deps(root: str | Path = ".", stages: list[StageCode] | None = None) -> dict[str, list[str]]:
    """``{stage: [in-repo file it runs or reads but its deps do not cover]}`` for every stage lacking one."""
    stages = resolved_stages(root) if stages is None else stages
    missing = {}
    for stage in stages:
        lacking = [f for f in code_files(root, stage.modules) if not covered(f, stage.deps)]
        if lacking:
            missing[stage.name] = lacking
    return missing


def unused_deps(root: str | Path = ".", stages: list[StageCode] | None = None) -> dict[str, list[str]]:
    """``{stage: [dep under skinflow/ or pipelines/ that covers none of the files it runs]}``."""
    stages = resolved_stages(root) if stages is None else stages
    unused = {}
    for stage in stages:
        files = code_files(root, stage.modules)
        idle = [d for d in stage.deps if d.split("/")[0] in IN_REPO_PACKAGES and not any(covered(f, [d]) for f in files)]
        if idle:
            unused[stage.name] = idle
    return unused


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skinflow.lineage.code_deps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", help="only these stages (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 naming each code file a stage's deps miss, and each code dep it does not run")
    args = parser.parse_args(argv)
    stages = [s for s in resolved_stages(".") if not args.stages or s.name in args.stages
              or s.name.split("@")[0] in args.stages]
    if args.check:
        missing, unused = missing_deps(".", stages), unused_deps(".", stages)
        for name, files in missing.items():
            print(f"{name}: deps miss {', '.join(files)}")
        for name, files in unused.items():
            print(f"{name}: deps name code it does not run: {', '.join(files)}")
        if missing or unused:
            return 1
        print(f"code deps complete for {len(stages)} stages")
        return 0
    for stage in stages:
        print(f"{stage.name}:")
        for f in code_files(".", stage.modules):
            print(f"  - {f}{'' if covered(f, stage.deps) else '   # not in deps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
