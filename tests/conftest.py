"""Shared fixtures: real test data, random-initialised torchvision weights, a real S3 endpoint
(moto's server on 127.0.0.1, reached through s3fs) and one local Ray session."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
SMALL = dict(min_size=128, max_size=192)
# Quick runs of the random-weight R50 models: 10 detections from 100 proposals per image. On this
# 2-core CPU the heads over 1000 proposals and 100 masks cost 9x the rest of a forward at 128 px
# (2.3 s against 0.25 s an image); what the runner tests compare is the same either way.
QUICK = dict(**SMALL, max_detections=10, rpn_proposals=100)  # mb.infer / make_config
SMALL_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]  # the CLI, the runner tests' runs
QUICK_ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]  # the CLI
# The runner tests' session fixtures (one Ray, one clean run), registered here once: a fixture
# imported into several test modules is a separate fixture in each, set up again per module.
pytest_plugins = ["ray_fixtures"]


def _share_the_cores() -> None:
    """Under pytest-xdist each test process takes its share of the cores for torch, and so does
    what it starts (CLI subprocesses, Ray's workers: OMP_NUM_THREADS). Two processes of two
    threads each on 2 cores wait on each other: two test_reference tests side by side took 69 s
    each that way and 51 s with one thread each. Rows never depend on it where a test compares
    them (both sides run at one thread count, or the test sets it)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()


def _random_weights(path: Path, builder, *, num_classes: int, boost: list[int], seed: int) -> Path:
    torch.manual_seed(seed)
    net = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    with torch.no_grad():
        # Random heads score every class ~1/num_classes; lift a few so detections are confident.
        net.roi_heads.box_predictor.cls_score.bias[boost] += 4.0
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def mask_weights(weights_dir) -> Path:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return _random_weights(weights_dir / "mask.pth", maskrcnn_resnet50_fpn, num_classes=91, boost=[1, 3, 18], seed=0)


@pytest.fixture(scope="session")
def mask_v2_weights(weights_dir) -> Path:
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    return _random_weights(weights_dir / "mask_v2.pth", maskrcnn_resnet50_fpn_v2, num_classes=91, boost=[1, 3, 18], seed=2)


@pytest.fixture(scope="session")
def keypoint_weights(weights_dir) -> Path:
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    return _random_weights(weights_dir / "kp.pth", keypointrcnn_resnet50_fpn, num_classes=2, boost=[1], seed=1)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A copy of the real photographs (public domain / Apache-2.0, see data/SOURCES.md)."""
    d = tmp_path_factory.mktemp("images")
    for p in sorted(IMAGES.glob("*.jpg")):
        shutil.copy(p, d / p.name)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto's server on 127.0.0.1 (fake credentials, no AWS involved)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """An s3fs filesystem on the moto endpoint with a fresh bucket, and its storage options."""
    import uuid

    import s3fs

    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, bucket, options


def pytest_collection_modifyitems(config, items):
    """The test files with end-to-end tests on Ray (marked slow) first, then those that run the
    models many times without Ray (marked heavy). `make test` runs two
    pytest-xdist processes that take whole files in this order (`--dist loadfile`: a module's
    fixtures, such as a `ray start` cluster, are made once; `--no-loadscope-reorder`: xdist would
    sort the files by their number of tests), so the long files start first and the short ones
    fill the end, rather than a long Ray test starting last while the other process has nothing
    left."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    heavy = {item.path for item in items if item.get_closest_marker("heavy")}  # then the long files without Ray
    items.sort(key=lambda item: (item.path not in slow, item.path not in heavy))  # stable: each file's own order kept
