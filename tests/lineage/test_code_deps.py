"""Stage code deps: dvc.yaml covers every in-repo file a stage runs, and DVC sees edits to them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skinflow.lineage.code_deps import (
    StageCode, code_files, command_modules, covered, missing_deps, resolved_stages, unused_deps,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stages() -> list[StageCode]:
    return resolved_stages(REPO)


def test_every_stage_covers_the_code_it_runs(stages):
    missing = missing_deps(REPO, stages)
    assert not missing, "add these to the stages' deps in dvc.yaml (python -m skinflow.lineage.code_deps " \
                        f"lists each stage's code): {json.dumps(missing, indent=1)}"


def test_no_stage_depends_on_code_it_does_not_run(stages):
    unused = unused_deps(REPO, stages)
    assert not unused, f"these deps re-run their stage for nothing; drop them from dvc.yaml: {json.dumps(unused, indent=1)}"


def test_every_stage_runs_in_repo_code(stages):
    assert stages and all(s.modules for s in stages), [s.name for s in stages if not s.modules]


def test_a_dropped_dep_is_reported(stages):
    synth = next(s for s in stages if s.name == "synth")
    dropped = StageCode(synth.name, synth.modules, tuple(d for d in synth.deps if d != "skinflow/data/skinsynth_render.py"))
    assert missing_deps(REPO, [dropped]) == {"synth": ["skinflow/data/skinsynth_render.py"]}


def test_command_modules_unwraps_the_lineage_wrapper():
    cmd = "python -m skinflow.lineage run s@0 -- python -m pipelines.rl_variant --variant x --seed 0"
    assert command_modules(cmd) == ["pipelines.rl_variant"]
    assert command_modules("python pipelines/synth.py --set seed=1") == ["pipelines.synth"]
    assert command_modules("dvc --version") == []


def test_folder_dep_covers_files_under_it():
    assert covered("skinflow/data/taxonomies/ham10000.csv", ["skinflow/data/taxonomies"])
    assert covered("skinflow/io.py", ["skinflow/"])
    assert not covered("skinflow/iox.py", ["skinflow/io.py"])
    assert not covered("skinflow/data/manifest.py", ["skinflow/data/man"])


def test_walk_follows_lazy_relative_and_package_imports(tmp_path):
    files = {
        "pipelines/__init__.py": "",
        "pipelines/job.py": "from skinflow.pkg import sub\n\ndef main():\n    from skinflow import lazy\n",
        "skinflow/__init__.py": "VERSION = 1\n",
        "skinflow/pkg/__init__.py": "from .helper import x\n",
        "skinflow/pkg/helper.py": "from pathlib import Path\nTABLE = Path(__file__).with_name('table.yaml')\nx = 1\n",
        "skinflow/pkg/table.yaml": "a: 1\n",
        "skinflow/pkg/sub.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from skinflow import typing_only\n",
        "skinflow/lazy.py": "import json\n",
        "skinflow/typing_only.py": "",
        "skinflow/unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert code_files(tmp_path, ["pipelines.job"]) == [
        "pipelines/job.py", "skinflow/__init__.py", "skinflow/lazy.py", "skinflow/pkg/__init__.py",
        "skinflow/pkg/helper.py", "skinflow/pkg/sub.py", "skinflow/pkg/table.yaml",
    ]


def _copy_project(dest: Path) -> Path:
    """dvc.yaml, params.yaml and the code, as a git-less DVC project whose lock records the code as it is."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, dest / name)
    for folder in ("skinflow", "pipelines"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / ".dvc").mkdir()
    (dest / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    # Record every stage's current dep hashes without running anything (data and models are absent).
    code = ("from dvc.repo import Repo\n"
            "with Repo('.') as repo:\n"
            "    stages = list(repo.index.stages)\n"
            "    for stage in stages:\n"
            "        stage.save(allow_missing=True, run_cache=False)\n"
            "    with repo.lock:\n"
            "        stages[0].dvcfile.dump_stages(stages, update_pipeline=False)\n")
    subprocess.run([sys.executable, "-c", code], cwd=dest, check=True, capture_output=True)
    return dest


def _changed_deps(project: Path) -> dict[str, dict]:
    """``{stage: {dep path: state, or {param: state} for params.yaml}}`` from ``dvc status``."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, check=True, capture_output=True, text=True)
    out: dict[str, dict] = {}
    for stage, entries in json.loads(done.stdout or "{}").items():
        for entry in entries:
            out.setdefault(stage, {}).update(entry.get("changed deps", {}) if isinstance(entry, dict) else {})
    return out


def _stages_with_modified_code(project: Path) -> dict[str, set[str]]:
    out = {stage: {p for p, state in changed.items() if state == "modified" and p.startswith(("skinflow/", "pipelines/"))}
           for stage, changed in _changed_deps(project).items()}
    return {stage: paths for stage, paths in out.items() if paths}


@pytest.mark.timeout(300)
def test_dvc_status_reports_the_stages_an_edit_affects(tmp_path, stages):
    project = _copy_project(tmp_path)
    assert _stages_with_modified_code(project) == {}, "the copy's lock records the code as it is"
    for edited, expected in (("skinflow/data/skinsynth_render.py", {"synth"}),
                             ("skinflow/data/manifest.py", {"ingest", "validate"})):
        original = (project / edited).read_text(encoding="utf-8")
        (project / edited).write_text(original + "\n# edited\n", encoding="utf-8")
        reported = {stage for stage, paths in _stages_with_modified_code(project).items() if edited in paths}
        (project / edited).write_text(original, encoding="utf-8")
        assert expected <= reported, f"editing {edited}: dvc status reports {sorted(reported)}"
        # And exactly the stages whose code reads it, foreach/matrix items included.
        assert reported == {s.name for s in stages if edited in code_files(REPO, s.modules)}


def _stages_with_changed_params(project: Path) -> dict[str, set[str]]:
    return {stage: set(changed["params.yaml"]) for stage, changed in _changed_deps(project).items()
            if isinstance(changed.get("params.yaml"), dict)}


@pytest.mark.timeout(300)
def test_runtime_knobs_rerun_nothing_and_result_keys_do(tmp_path):
    import yaml

    project = _copy_project(tmp_path)
    assert _stages_with_changed_params(project) == {}
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    original = (project / "params.yaml").read_text(encoding="utf-8")
    # Every runtime knob changed at once: no stage is stale.
    for section, knobs in params["runtime"].items():
        for key, value in knobs.items():
            knobs[key] = value + 3 if isinstance(value, int) else f"{value}-elsewhere"
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    assert _stages_with_changed_params(project) == {}
    # A key that shapes results re-runs the stages that read its section, and only those.
    params = yaml.safe_load(original)
    params["stage2_rl"]["learning_rate"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    stale = _stages_with_changed_params(project)
    assert stale and all(keys == {"stage2_rl"} for keys in stale.values()), stale
    assert "stage2_rl@0" in stale and not {"warmup", "stage1_rl@0", "evaluate@stage1-0"} & set(stale), sorted(stale)
