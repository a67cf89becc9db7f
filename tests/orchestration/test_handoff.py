"""Stages in two checkouts hand their artifacts over through an S3-compatible remote (moto's server on
127.0.0.1), and the orchestrating checkout keeps the one dvc.lock of record."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from dvc_toy import dvc, git, make_repo, run, up_to_date
from skinflow.orchestration.handoff import Package, read_lock, receive, send, stage_io, upstream_package

# `first` writes a cached file and an uncached metric; `second` needs both; `unrelated` is never needed by it.
DVC_YAML = """
stages:
  first:
    cmd: python first.py
    outs: [a.txt]
    metrics:
      - m.json:
          cache: false
  unrelated:
    cmd: python -c "open('u.txt', 'w').write('u')"
    outs: [u.txt]
  second:
    cmd: python second.py
    deps: [a.txt, m.json]
    outs: [b.txt]
"""
SCRIPTS = {
    "first.py": "import json, pathlib\npathlib.Path('a.txt').write_text('a')\npathlib.Path('m.json').write_text(json.dumps({'n': 1}))\n",
    "second.py": ("import json, pathlib\nn = json.loads(pathlib.Path('m.json').read_text())['n']\n"
                  "pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() * (n + 1))\n"),
}
BUCKET = "skinflow-remote"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3-compatible server on 127.0.0.1 with one bucket; the DVC subprocesses reach it by endpointurl."""
    pytest.importorskip("dvc_s3", reason="the S3 remote needs dvc-s3 (pip install -e '.[test]')")
    server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[test]')")
    import boto3

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _checkout_with_s3_remote(path, endpoint):
    repo = make_repo(path, DVC_YAML, SCRIPTS, with_project_config=False)
    dvc("remote", "add", "-d", "s3", f"s3://{BUCKET}/{path.name}", cwd=repo)
    dvc("remote", "modify", "s3", "endpointurl", endpoint, cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "s3 remote", cwd=repo)
    return repo


def test_stage_io_names_exactly_the_upstream_outputs_a_stage_needs(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML, SCRIPTS, with_project_config=False)
    io = stage_io(repo, "second")
    assert io.deps == ("a.txt", "m.json") and io.cached_outs == ("b.txt",) and io.uncached_outs == ()
    assert io.inputs == (("first", "a.txt", True), ("first", "m.json", False))
    assert stage_io(repo, "first").uncached_outs == ("m.json",)
    with pytest.raises(KeyError):
        stage_io(repo, "nope")


def test_a_package_round_trips_as_json_and_keeps_only_what_a_stage_needs():
    package = Package({"first": {"cmd": "x"}, "unrelated": {"cmd": "y"}},
                      {"m.json": "e30=", "metrics/eval/a.json": "e30=", "other.json": "e30="})
    assert Package.from_json(package.to_json()) == package
    picked = package.only({"first"}, {"m.json", "metrics/eval"})
    assert picked.stages == {"first": {"cmd": "x"}} and set(picked.files) == {"m.json", "metrics/eval/a.json"}


@pytest.mark.slow
def test_two_checkouts_hand_over_through_s3_and_one_lock_holds_every_stage(tmp_path, s3_endpoint):
    cpu = _checkout_with_s3_remote(tmp_path / "cpu", s3_endpoint)
    run(["git", "clone", "-q", str(cpu), str(tmp_path / "gpu")], tmp_path)
    gpu = tmp_path / "gpu"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}

    # The CPU checkout runs the parents and sends their packages (cached outputs go to S3).
    packages = Package()
    for stage in ("first", "unrelated"):
        dvc("repro", "--single-item", stage, cwd=cpu)
        packages = packages.merged(send(cpu, stage, env=env))
    assert set(packages.stages) == {"first", "unrelated"} and set(packages.files) == {"m.json"}

    # The GPU checkout has none of it; it receives only what `second` needs, pulls it from S3, runs, sends.
    assert not (gpu / "a.txt").exists() and not (gpu / "m.json").exists()
    pulled = receive(gpu, upstream_package(packages, stage_io(gpu, "second")), stage="second", env=env)
    assert pulled == ["a.txt"] and (gpu / "a.txt").read_text() == "a" and (gpu / "m.json").exists()
    assert not (gpu / "u.txt").exists(), "an output the stage does not need was pulled"
    dvc("repro", "--single-item", "second", cwd=gpu)
    back = send(gpu, "second", env=env)
    assert set(back.stages) == {"second"} and back.files == {}

    # The CPU checkout merges the entry: one dvc.lock with every stage, consistent with the outputs on S3.
    receive(cpu, back, pull=False)
    assert list(read_lock(cpu)["stages"]) == ["first", "unrelated", "second"]
    assert not (cpu / "b.txt").exists()   # only the entry came back; the output waits on the remote
    dvc("pull", cwd=cpu)
    assert (cpu / "b.txt").read_text() == "aa" and up_to_date(cpu)
    assert "Running stage" not in dvc("repro", cwd=cpu).stdout   # DVC agrees nothing is stale

    # A third, fresh clone of the committed lock gets every output from the remote alone.
    git("add", "-A", cwd=cpu)
    git("commit", "-qm", "dvc.lock after the run", cwd=cpu)
    run(["git", "clone", "-q", str(cpu), str(tmp_path / "fresh")], tmp_path)
    fresh = tmp_path / "fresh"
    dvc("pull", cwd=fresh)
    assert (fresh / "b.txt").read_text() == "aa" and (fresh / "u.txt").read_text() == "u" and up_to_date(fresh)


def test_receive_refuses_a_stage_whose_parents_have_no_lock_entry(tmp_path):
    repo = make_repo(tmp_path / "repo", DVC_YAML, SCRIPTS, with_project_config=False)
    with pytest.raises(RuntimeError, match="no dvc.lock entry for upstream"):
        receive(repo, Package(), stage="second")
