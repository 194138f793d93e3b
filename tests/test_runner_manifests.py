"""Every job spec and cluster manifest loads, and the command it runs exists with valid options."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from mrcnn_batch.cli import app

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted([*ROOT.glob("cluster/*.yaml"), *ROOT.glob("jobs/*.yaml")])


def check_infer_command(command: str) -> None:
    """``mrcnn-batch infer ...`` or ``python jobs/infer.py ...``: parsed by the real CLI."""
    argv = shlex.split(command)
    if argv[:2] == ["python", "jobs/infer.py"]:
        assert (ROOT / "jobs" / "infer.py").is_file()
        args = argv[2:]
    else:
        assert argv[:2] == ["mrcnn-batch", "infer"], argv
        args = argv[2:]
    infer = typer.main.get_command(app).commands["infer"]
    try:
        infer.make_context("infer", list(args))  # unknown or malformed options raise here
    except Exception as e:  # typer's (vendored) click.UsageError and subclasses
        if not any(c.__name__ == "UsageError" for c in type(e).__mro__):
            raise
        pytest.fail(f"{command!r}: {e}")


def entrypoints(doc: dict) -> list[str]:
    if doc.get("kind") == "RayJob":
        return [doc["spec"]["entrypoint"]]
    if "entrypoint" in doc:
        return [doc["entrypoint"]]
    return []


def pod_specs(doc: dict) -> list[tuple[dict, dict]]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [(g, g["template"]["spec"]) for g in groups]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_loads_and_its_command_is_valid(path):
    doc = yaml.safe_load(path.read_text())
    for command in entrypoints(doc):
        check_infer_command(command)
    if doc.get("kind") in ("RayCluster", "RayJob"):
        groups = pod_specs(doc)
        workers = [g for g, _ in groups[1:]]
        gpu = [g for g in workers if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
        assert gpu, "a GPU worker group (nvidia.com/gpu)"
        for g in gpu:
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
            assert int(g["rayStartParams"]["object-store-memory"]) > 0
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["enableInTreeAutoscaling"] is True
        if doc["kind"] == "RayJob":
            assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    if "provider" in doc:  # a `ray up` config
        types = doc["available_node_types"]
        assert doc["head_node_type"] in types
        gpu = [t for t in types.values() if t.get("resources", {}).get("GPU")]
        assert gpu and all(0 <= t["min_workers"] <= t["max_workers"] <= doc["max_workers"] for t in gpu)
        assert any("--object-store-memory" in c for c in doc["worker_start_ray_commands"])
    if path.name == "infer_job.yaml":
        assert (ROOT / doc["runtime_env_file"]).is_file()


def test_runtime_env_example_is_a_valid_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields


def test_a_bad_option_is_caught():
    with pytest.raises(pytest.fail.Exception):
        check_infer_command("mrcnn-batch infer a b --no-such-option 1")


def test_the_image_recipe_agrees_with_the_manifests_and_this_ray():
    """cluster/Dockerfile builds the manifests' image: Ray and Python as the driver's (Ray needs
    both to match), every copied path exists, the tag is the package's version."""
    import re
    import sys

    import ray

    docker = (ROOT / "cluster" / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)-py(\d)(\d+)-gpu$", docker, re.M)
    assert base, "the base image is rayproject/ray:<ray>-py<python>-gpu"
    assert base.group(1) == ray.__version__
    assert (int(base.group(2)), int(base.group(3))) == sys.version_info[:2]
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", docker, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = yaml.safe_load((ROOT / "cluster" / name).read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == ray.__version__, name
        for _, pod in pod_specs(doc):
            assert pod["containers"][0]["image"] == f"REGISTRY/mrcnn-batch:{version}-gpu", name
    aws = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    assert aws["docker"]["image"] == f"rayproject/ray:{base.group(1)}-py{base.group(2)}{base.group(3)}-gpu"
    mount = next(dst for dst, src in aws["file_mounts"].items() if src == ".")
    assert any(f"pip install --no-cache-dir {mount}" == c for c in aws["setup_commands"])
