"""The command line: help, the model registry, and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import QUICK, QUICK_ARGS

CLI = [sys.executable, "-m", "mrcnn_batch.cli"]


def run(*args, env=None, **kw):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=e, timeout=600, **kw)


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("infer", "models", "eval"):
        assert cmd in res.stdout


def test_models_json_carries_metadata():
    res = run("models", "--json")
    assert res.returncode == 0, res.stderr
    models = {m["name"]: m for m in json.loads(res.stdout)}
    assert {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn", "maskrcnn+keypointrcnn_resnet50_fpn", "demo"} <= set(models)
    kp = models["keypointrcnn_resnet50_fpn"]
    assert len(kp["keypoint_names"]) == len(kp["oks_sigmas"]) == 17
    assert {"id": 1, "name": "person"} in models["maskrcnn_resnet50_fpn"]["categories"]


def invoke(*args, env=None):
    """The CLI in this process (``main()`` is ``app()``): where loading torch and the model is
    what a check costs, not the process's exit code, which ``run`` checks."""
    from typer.testing import CliRunner

    from mrcnn_batch.cli import app

    return CliRunner().invoke(app, list(map(str, args)), env=env)


def test_offline_without_weights_names_the_weights_option(tmp_path, image_dir):
    res = invoke("infer", image_dir, tmp_path / "out", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert res.exit_code == 2
    assert "--weights" in res.stderr and "MaskRCNN_ResNet50_FPN_Weights" in res.stderr
    assert not (tmp_path / "out" / "_run.json").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--storage-options", "{nope"], "must be a JSON object"),
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--classes", "unicorn"], "unknown class name"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, image_dir, mask_weights, args, message):
    res = invoke("infer", image_dir, tmp_path / "out", "--weights", mask_weights, "--min-size", 128, "--max-size", 192, *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr


def test_missing_input_exits_2(tmp_path, mask_weights):
    res = run("infer", tmp_path / "nothing", tmp_path / "out", "--weights", mask_weights)
    assert res.returncode == 2 and "does not exist" in res.stderr
    (tmp_path / "c.json").write_text('{"images": [{"id": 1}]}')
    res = run("infer", tmp_path / "c.json", tmp_path / "out", "--dry-run")
    assert res.returncode == 2 and "lacks 'id' or 'file_name'" in " ".join(res.stderr.split())  # quotes intact


# The CLI in a process where `import torch` fails: what it does there, it does without torch.
WITHOUT_TORCH = [sys.executable, "-c", ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'mrcnn-batch'; "
                                        "from mrcnn_batch.cli import main; main()")]


def test_unknown_class_of_a_registered_model_exits_2_before_torch_loads(tmp_path, image_dir):
    """The model's own categories are known without torch: a misspelt --classes is said at once."""
    out = tmp_path / "out"
    for model, names in (("demo", "ellipse, rectangle, triangle"), ("maskrcnn_resnet50_fpn", "airplane, apple")):
        cmd = [*WITHOUT_TORCH, "infer", image_dir, out, "--model", model, "--classes", "unicorn"]
        res = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 2, res.stderr
        assert "unknown class name(s) 'unicorn'" in res.stderr and names in res.stderr, res.stderr
    assert not out.exists()


def test_other_settings_on_an_existing_run_exit_3_before_torch_loads(tmp_path, image_dir, mask_weights):
    import mrcnn_batch as mb

    out = tmp_path / "out"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "dog.jpg").write_bytes((image_dir / "dog.jpg").read_bytes())
    mb.infer(str(tmp_path / "one"), str(out), weights=str(mask_weights), **QUICK)

    def infer(*args, weights=mask_weights):
        cmd = [*WITHOUT_TORCH, "infer", tmp_path / "one", out, "--weights", weights, *args]
        return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600, check=False)

    res = infer("--min-size", 160, "--max-size", 192, "--max-detections", 10, "--rpn-proposals", 100)
    assert res.returncode == 3, res.stderr
    assert "min_size: 128 there, 160 now" in res.stderr and "--overwrite" in res.stderr
    assert "rpn_proposals" not in res.stderr  # the same there and now
    res = infer(*(a for a in QUICK_ARGS if not a.startswith("--rpn-proposals")))  # the model's proposals
    assert res.returncode == 3
    assert "rpn_proposals: 100 there, None now" in res.stderr, res.stderr
    other = tmp_path / "other.pth"
    other.write_bytes(mask_weights.read_bytes() + b"\0")  # other bytes: other weights
    res = infer(*QUICK_ARGS, weights=other)
    assert res.returncode == 3 and "weights_sha256" in res.stderr, res.stderr
    # the same settings are not refused: they go on to the driver, which needs torch (absent here)
    res = infer(*QUICK_ARGS)
    assert res.returncode != 3 and "other settings" not in res.stderr and "torch" in res.stderr, res.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, image_dir):
    from mrcnn_batch.plan import build_plan
    from mrcnn_batch.config import InputSpec

    out = tmp_path / "out"
    res = run("infer", image_dir, out, "--shard-size", 2, "--dry-run")  # no weights needed: no model is loaded
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "dry run: 5 images in 3 shards of up to 2" in text and "no run yet; nothing was written" in text
    first = build_plan(InputSpec(url=str(image_dir)), shard_size=2).slice(0, 1).to_pylist()[0]
    assert f"(image_id {first['image_id']})" in text
    assert not out.exists()

    import mrcnn_batch as mb

    mb.infer(str(image_dir), str(out), model="demo", shard_size=2)  # the small model: the plan is what matters
    res = run("infer", image_dir, out, "--model", "demo", "--shard-size", 2, "--dry-run")
    assert res.returncode == 0 and "3 shards committed" in " ".join(res.stdout.split())


@pytest.mark.parametrize("columns", ["80", "140"])
def test_models_shows_the_reference_metrics(columns):
    res = run("models", env={"COLUMNS": columns})
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "COCO-val2017: box 37.9, mask 34.6" in text  # maskrcnn_resnet50_fpn, torchvision's published figures
    assert "box 54.6, keypoints 65.0" in text
    assert "held-out set of 300 images: bbox 85.9" in text  # the demo model, measured
    assert "torchvision:MaskRCNN_ResNet50_FPN_Weights.COCO_V1" in text.replace(" ", "")


def test_every_option_and_argument_says_what_it_is_for():
    """Help text on every option and argument of every command; flags without a ``<bool>`` tag."""
    import typer.main

    from mrcnn_batch.cli import app

    group = typer.main.get_command(app)
    missing, tagged = [], []
    for name, command in group.commands.items():
        for param in command.params:
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{name} {param.name}")
            if getattr(param, "is_flag", False) and param.metavar != "":
                tagged.append(f"{name} {param.name}")
    assert not missing, f"no help: {missing}"
    assert not tagged, f"flags that would show <bool>: {tagged}"


def test_help_pages_show_no_type_tags():
    """Every command's help names its arguments plainly (``infer [OPTIONS] INPUT OUTPUT``) and its
    values by what they are (NAME, URL, JSON, N), never typer's ``{input}``, ``<str>`` or ``<bool>``."""
    import re

    from typer.testing import CliRunner

    from mrcnn_batch.cli import app

    runner = CliRunner()
    pages = {"": runner.invoke(app, ["--help"], terminal_width=200)}
    for name in ("infer", "eval", "status", "models", "demo", "render", "report", "export"):
        pages[name] = runner.invoke(app, [name, "--help"], terminal_width=200)
    for name, res in pages.items():
        assert res.exit_code == 0, (name, res.output)
        tags = re.findall(r"<(?:str|int|float|bool|text|integer)[^>]*>|\{[A-Za-z_]+\}", res.output)
        assert not tags, (name, tags)
    assert "infer [OPTIONS] INPUT OUTPUT" in " ".join(pages["infer"].output.split())
    assert "eval [OPTIONS] [RUN]" in " ".join(pages["eval"].output.split())


def test_settings_are_compared_early_only_where_the_weights_are_at_hand(tmp_path, monkeypatch):
    """torchvision's named weights are found through torchvision (and may be downloaded), remote
    files are remote: their run's settings are left to the driver, which loads them anyway."""
    import mrcnn_batch as mb
    from mrcnn_batch.errors import RunRefused
    from mrcnn_batch.models.demo import WEIGHTS_URI
    from mrcnn_batch.run import preflight

    out = tmp_path / "out"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(b"not an image")  # the run needs no pixels
    mb.infer(str(tmp_path / "one"), str(out), model="demo")
    read = []
    monkeypatch.setattr(preflight, "read_weight_bytes", lambda source, **kw: read.append(source) or b"")
    for weights in (None, "s3://bucket/w.pth"):  # maskrcnn_resnet50_fpn's default: torchvision:...
        preflight.check_settings(mb.make_config(str(tmp_path / "one"), str(out), model="maskrcnn_resnet50_fpn",
                                                weights=weights))
    assert read == []
    with pytest.raises(RunRefused, match="min_size"):  # the packaged weights: compared here
        preflight.check_settings(mb.make_config(str(tmp_path / "one"), str(out), model="demo", min_size=100))
    assert read == [WEIGHTS_URI]
