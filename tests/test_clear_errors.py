"""Hostile or mistaken inputs end in one clear message and exit 2, never a traceback (exit 1):
malformed ground truth and predictions for ``eval``; for ``infer`` an output that is a file, a
storage endpoint that does not answer, a storage option the filesystem does not take, a bucket
that does not exist, and weights that pickle objects."""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings

import pytest
import torch
from typer.testing import CliRunner

from conftest import free_port
from mrcnn_batch.cli import EXIT_USAGE, app
from mrcnn_batch.models.weights import WeightsUnavailable, load_weights

DEMO = ["--model", "demo", "--executor", "local", "--no-progress"]

GT = {
    "images": [{"id": 1, "height": 20, "width": 30}, {"id": 2, "height": 20, "width": 30}],
    "categories": [{"id": 1, "name": "a"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0,
         "segmentation": [[2, 2, 7, 2, 7, 7]]},
    ],
}
PREDS = [{"image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9,
          "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]} for i in (1, 2)]
BIG = 2**63


def _ann(key, value):
    return lambda d: d["annotations"][1].__setitem__(key, value)


def _big_image(d):
    d["images"][1]["id"] = d["annotations"][1]["image_id"] = BIG


BAD_GT = {  # edit of GT -> what the message must say (after the file name)
    "polygon of 2 points": (_ann("segmentation", [[2, 2, 7, 2]]), "annotation 2: 'segmentation' polygon 0 has 4 numbers, fewer than 3 points"),
    "polygon of 1 point": (_ann("segmentation", [[2, 2]]), "annotation 2: 'segmentation' polygon 0 has 2 numbers, fewer than 3 points"),
    "empty polygon": (_ann("segmentation", [[]]), "annotation 2: 'segmentation' polygon 0 has 0 numbers, fewer than 3 points"),
    "no polygons": (_ann("segmentation", []), "annotation 2: 'segmentation' is an empty list; expected polygons"),
    "bad RLE counts": (_ann("segmentation", {"size": [20, 30], "counts": 5}), "annotation 2: 'segmentation' RLE 'counts'"),
    "annotation id 2**63": (_ann("id", BIG), f"annotation {BIG}: 'id' {BIG} is out of range"),
    "annotation id below -2**63": (_ann("id", -BIG - 1), f"annotation {-BIG - 1}: 'id' {-BIG - 1} is out of range"),
    "category_id 2**64": (_ann("category_id", 2**64), f"annotation 2: 'category_id' {2**64} is out of range"),
    "image id 2**63": (_big_image, f"images[1]: 'id' {BIG} is out of range"),
    "category id 2**63": (lambda d: d["categories"][0].__setitem__("id", BIG), f"categories[0]: 'id' {BIG} is out of range"),
}


def _eval(tmp_path, gt_text: str, preds: list = PREDS):
    (tmp_path / "gt.json").write_text(gt_text)
    (tmp_path / "dt.json").write_text(json.dumps(preds))
    return CliRunner().invoke(app, ["eval", "--predictions", str(tmp_path / "dt.json"), "-a", str(tmp_path / "gt.json"),
                                    "--out", str(tmp_path / "o"), "--iou-types", "segm", "--workers", "0", "--no-plots"])


def _one_line(res) -> str:
    return " ".join(res.output.split())


@pytest.mark.parametrize("name", list(BAD_GT))
def test_eval_bad_ground_truth_is_named(tmp_path, name):
    edit, message = BAD_GT[name]
    doc = copy.deepcopy(GT)
    edit(doc)
    res = _eval(tmp_path, json.dumps(doc))
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"ground truth {tmp_path / 'gt.json'}: {message}" in _one_line(res)


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not valid JSON"),
], ids=["deep array", "deep inside an object", "5000-digit id"])
def test_eval_unparseable_ground_truth_is_named(tmp_path, text, message):
    res = _eval(tmp_path, text)
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"ground truth {tmp_path / 'gt.json'}: " in _one_line(res) and message in _one_line(res)


def test_eval_prediction_id_out_of_range(tmp_path):
    res = _eval(tmp_path, json.dumps(GT), [{**PREDS[0], "image_id": BIG}])
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"results[0]: 'image_id' {BIG} is out of range" in _one_line(res)


# --------------------------------------------------------------------------- infer


@pytest.fixture
def no_driver(monkeypatch):
    """Fail the test if the driver starts: it takes the run's lease first, then loads the model."""
    from mrcnn_batch.run.lease import Lease

    monkeypatch.setattr(Lease, "acquire", lambda *a, **k: pytest.fail("the driver ran"))


@pytest.mark.parametrize("below", [False, True], ids=["output is a file", "output under a file"])
def test_infer_output_that_is_a_file(tmp_path, image_dir, no_driver, below):
    (tmp_path / "thesis.pdf").write_bytes(b"%PDF")
    output = tmp_path / "thesis.pdf" / "run" if below else tmp_path / "thesis.pdf"
    res = CliRunner().invoke(app, ["infer", str(image_dir), str(output), *DEMO])
    assert res.exit_code == EXIT_USAGE, res.output
    assert str(tmp_path / "thesis.pdf") in _one_line(res) and "is a file" in _one_line(res)
    assert (tmp_path / "thesis.pdf").read_bytes() == b"%PDF"


def test_infer_dead_endpoint(tmp_path, no_driver):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = {"endpoint_url": endpoint, "key": "k", "secret": "s"}
    res = CliRunner().invoke(app, ["infer", "s3://photos/set/", str(tmp_path / "out"), *DEMO,
                                   "--storage-options", json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"input s3://photos/set/: cannot reach the storage at {endpoint}" in _one_line(res)


@pytest.mark.parametrize("command", [["status"], ["report"], ["render"], ["export", "--out", "ignored"]])
def test_readers_of_a_run_name_a_dead_endpoint_or_missing_credentials(command, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = {"endpoint_url": endpoint, "key": "k", "secret": "s"}
    res = CliRunner().invoke(app, [command[0], "s3://runs/r1", *command[1:], "--storage-options", json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"run s3://runs/r1: cannot reach the storage at {endpoint}" in _one_line(res)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    res = CliRunner().invoke(app, [command[0], "s3://runs/r1", *command[1:], "--storage-options",
                                   json.dumps({"endpoint_url": endpoint})])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "no credentials for s3://" in _one_line(res)


@pytest.mark.parametrize("flag,input_url", [("--storage-options", "s3://photos/set/"),
                                            ("--output-storage-options", None)])
def test_infer_bogus_storage_option(tmp_path, image_dir, no_driver, flag, input_url):
    # a dead endpoint too, so that nothing could ever reach AWS: the option is refused first
    options = {"nosuch": 1, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    output = str(tmp_path / "out") if input_url else "s3://runs/r1"
    res = CliRunner().invoke(app, ["infer", input_url or str(image_dir), output, *DEMO, flag, json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "storage option 'nosuch' is not accepted by the s3:// filesystem" in _one_line(res)


def test_infer_storage_options_nested_too_deeply(tmp_path, image_dir, no_driver):
    res = CliRunner().invoke(app, ["infer", str(image_dir), str(tmp_path / "out"), *DEMO,
                                   "--storage-options", "[" * 100_000 + "]" * 100_000])
    assert res.exit_code == EXIT_USAGE and "must be a JSON object" in _one_line(res), res.output


@pytest.mark.parametrize("prefix", ["/runs/r1", ""], ids=["prefix", "bucket root"])
def test_infer_missing_output_bucket_is_not_created(s3, image_dir, no_driver, prefix):
    fs, bucket, options = s3
    fs.put(str(next(image_dir.glob("*.jpg"))), f"{bucket}/photos/a.jpg")
    missing = f"{bucket}-missing"
    res = CliRunner().invoke(app, ["infer", f"s3://{bucket}/photos/", f"s3://{missing}{prefix}", *DEMO,
                                   "--storage-options", json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert f"bucket '{missing}' does not exist at {options['endpoint_url']}" in _one_line(res)
    fs.invalidate_cache()
    assert not fs.exists(missing)


def test_infer_existing_bucket_is_fine(s3, image_dir):
    """The checks refuse nothing a run may write to: a new prefix in an existing bucket."""
    from mrcnn_batch.api import make_config
    from mrcnn_batch.run.preflight import check_storage

    _, bucket, options = s3
    check_storage(make_config(str(image_dir), f"s3://{bucket}/runs/r1", model="demo", output_storage_options=options))
    check_storage(make_config(f"s3://{bucket}/photos/", f"s3://{bucket}", model="demo", storage_options=options))


# --------------------------------------------------------------------------- weights


class _Module(torch.nn.Module):
    def forward(self, x):
        return x


def _pickled_namespace(path):
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)


def _blocked_module(path):
    torch.save({"model": {"w": torch.zeros(1)}, "stat": os.stat_result((0,) * 10)}, path)


def _torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(_Module()), path)


@pytest.mark.parametrize("write,reason", [
    (_pickled_namespace, "it pickles argparse.Namespace, which is not a tensor"),
    (_blocked_module, "it pickles os.stat_result, which is not a tensor"),
    (_torchscript, "it is a TorchScript archive, not a state dict"),
], ids=["pickled object", "blocked module", "torchscript"])
def test_weights_refusal_states_the_reason_not_torchs_advice(tmp_path, write, reason):
    write(tmp_path / "w.pth")
    with warnings.catch_warnings(), pytest.raises(WeightsUnavailable) as info:
        warnings.simplefilter("ignore")  # torch warns of a TorchScript archive before refusing it
        load_weights(str(tmp_path / "w.pth"))
    message = str(info.value)
    assert "not a loadable state dict: " + reason in message
    assert "False" not in message and "safe_globals" not in message and "\x1b" not in message


def test_weights_refusal_through_the_cli(tmp_path, image_dir):
    _pickled_namespace(tmp_path / "w.pth")
    res = CliRunner().invoke(app, ["infer", str(image_dir), str(tmp_path / "out"), *DEMO, "--weights", str(tmp_path / "w.pth")])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "it pickles argparse.Namespace" in _one_line(res) and "False" not in res.output


@pytest.mark.parametrize("options,message", [
    ({"nosuch": 1}, "storage option 'nosuch' is not accepted by the s3:// filesystem"),
    ({}, "cannot reach the storage at http://127.0.0.1:"),
], ids=["bogus option", "dead endpoint"])
def test_eval_storage_problems(tmp_path, options, message):
    options = {**options, "endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s"}
    res = CliRunner().invoke(app, ["eval", "--predictions", "s3://b/dt.json", "-a", "s3://b/gt.json", "--out",
                                   str(tmp_path / "o"), "--storage-options", json.dumps(options)])
    assert res.exit_code == EXIT_USAGE, res.output
    assert "ground truth s3://b/gt.json: " + message in _one_line(res)
