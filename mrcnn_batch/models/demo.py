"""The demo model's registry entry: a small Mask R-CNN with box, mask and keypoint heads, for
the shapes dataset (the network itself: ``demo_net.py``, imported when it is built).

One network predicts all three outputs, as in the Mask R-CNN paper: keypoints are one-hot
masks of the same RoI heads (torchvision's ``RoIHeads`` runs its mask and keypoint branches
together when both are set). The backbone is a light ResNet-style network trained from scratch
(BatchNorm, four stages at strides 4..32) under a 64-channel FPN, sized for 160-240 px images
on CPU. Its weights were trained by ``jobs/train_demo.py`` on ``mrcnn_batch.datasets.shapes`` and
ship in the package (``weights/demo.pt``, facts and held-out metrics in ``weights/demo.json``).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from mrcnn_batch.datasets.shapes import (
    CATEGORIES,
    KEYPOINT_NAMES,
    OKS_SIGMAS,
    SKELETON,
    TRIANGLE_ID,
)
from mrcnn_batch.models.registry import ModelSpec, register

MIN_SIZE = 192
MAX_SIZE = 288
WEIGHTS_URI = "package://mrcnn_batch/models/weights/demo.pt"


def build(*, num_classes: int = len(CATEGORIES), num_keypoints: int | None = len(KEYPOINT_NAMES), **kwargs: Any):
    """The demo network with random weights (``demo_net.build``); ``kwargs`` go to ``MaskRCNN``."""
    from mrcnn_batch.models.demo_net import build as build_net

    return build_net(num_classes=num_classes, num_keypoints=num_keypoints, **kwargs)


def _reference_metrics() -> dict[str, Any]:
    try:
        facts = json.loads(
            resources.files("mrcnn_batch.models").joinpath("weights/demo.json").read_text()
        )
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    return dict(facts.get("heldout_metrics", {}))


DEMO = register(
    ModelSpec(
        name="demo",
        description=(
            "Small Mask R-CNN (ResNet-style trunk + 64-channel FPN) with mask and keypoint heads,"
            " trained from scratch on the synthetic shapes dataset (mrcnn_batch.datasets.shapes)"
        ),
        build=build,
        categories=CATEGORIES,
        has_masks=True,
        has_keypoints=True,
        keypoint_names=KEYPOINT_NAMES,
        skeleton=SKELETON,
        oks_sigmas=OKS_SIGMAS,
        keypoint_category_id=TRIANGLE_ID,
        default_weights=WEIGHTS_URI,
        reference_metrics=_reference_metrics(),
        default_min_size=MIN_SIZE,
        default_max_size=MAX_SIZE,
    )
)
