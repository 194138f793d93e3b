"""Fixtures of the runner tests: one local Ray for the session, clean reference runs, and
helpers that compare run directories table by table."""

from __future__ import annotations

import pytest
from conftest import QUICK, SMALL

import mrcnn_batch as mb

RAY_CPUS = 2
# Small and quick: 5 photos in 3 shards, three actors of half a CPU each.
# RUN: the models' full heads (about 2 s an image), for the tests that kill a worker busy with a
# shard; QUICK_RUN (10 detections from 100 proposals) where no test needs a shard to last.
RUN = dict(model="maskrcnn_resnet50_fpn", shard_size=2, batch_size=2, **SMALL)
QUICK_RUN = dict(model="maskrcnn_resnet50_fpn", shard_size=2, batch_size=2, **QUICK)
RAY = dict(executor="ray", workers=3, cpus_per_worker=0.5)


@pytest.fixture(scope="session")
def ray_session():
    """The session's Ray: reuse one already started (another module's fixture), else start one."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return ray


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory, image_dir, mask_weights):
    """The in-process run of ``RUN`` the runner tests compare with."""
    return _in_process(tmp_path_factory.mktemp("clean") / "run", image_dir, mask_weights, RUN)


@pytest.fixture(scope="session")
def quick_clean_run(tmp_path_factory, image_dir, mask_weights):
    """The in-process run of ``QUICK_RUN``."""
    return _in_process(tmp_path_factory.mktemp("quick-clean") / "run", image_dir, mask_weights, QUICK_RUN)


def _in_process(out, image_dir, mask_weights, settings: dict):
    """One torch thread, as in the half-CPU actors: convolutions sum in another order with
    another thread count, which moves scores in the sixth digit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = mb.infer(str(image_dir), str(out), weights=str(mask_weights), **settings)
    finally:
        torch.set_num_threads(threads)
    assert summary.complete
    return out


def tables(url: str, storage_options: dict | None = None) -> dict[str, list[tuple]]:
    """Every committed table as a sorted list of row tuples."""
    run = mb.open_run(url, storage_options=storage_options)
    out = {}
    for name in ("images", "instances", "keypoints"):
        rows = run.read_table(name).to_pylist()
        out[name] = sorted(_freeze(r) for r in rows)
    return out


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def assert_same_tables(a: dict, b: dict) -> None:
    for name in a:
        assert len(a[name]) == len(b[name]), name
        assert a[name] == b[name], name


def assert_exactly_once(url: str, storage_options: dict | None = None) -> None:
    """Every planned image has one ``images`` row; no ``instances`` row is repeated."""
    run = mb.open_run(url, storage_options=storage_options)
    planned = sorted(run.read_plan().column("image_id").to_pylist())
    got = sorted(run.read_table("images").column("image_id").to_pylist())
    assert got == planned, (run.committed_shards(), got, planned)
    inst = run.read_table("instances").select(["image_id", "instance_id"]).to_pylist()
    assert len({(r["image_id"], r["instance_id"]) for r in inst}) == len(inst)
