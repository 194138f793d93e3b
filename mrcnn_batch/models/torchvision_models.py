"""Registry entries for torchvision's Mask R-CNN and Keypoint R-CNN detectors.

The entries hold torchvision's metadata of the COCO weights as data (categories, keypoint names,
published metrics; ``tests/test_models.py`` checks them against torchvision's weights enums), so
that naming a model, listing the registry or checking ``--classes`` never imports torch; the
builders import torchvision when a network is built.
"""

from __future__ import annotations

from mrcnn_batch.models.registry import (
    COCO_PERSON_SIGMAS,
    COCO_PERSON_SKELETON,
    ModelSpec,
    register,
)

# torchvision's COCO_V1 weights' meta["categories"]: label i is COCO_CATEGORIES[i] ("N/A": an
# unused COCO id)
COCO_CATEGORIES = (
    '__background__', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
    'truck', 'boat', 'traffic light', 'fire hydrant', 'N/A', 'stop sign', 'parking meter', 'bench',
    'bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'N/A',
    'backpack', 'umbrella', 'N/A', 'N/A', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis',
    'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
    'surfboard', 'tennis racket', 'bottle', 'N/A', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
    'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza',
    'donut', 'cake', 'chair', 'couch', 'potted plant', 'bed', 'N/A', 'dining table', 'N/A', 'N/A',
    'toilet', 'N/A', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave',
    'oven', 'toaster', 'sink', 'refrigerator', 'N/A', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush',
)
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)


def _builder(name: str):
    """torchvision's builder ``name`` with no weights (they are loaded after), imported when called."""

    def build(*, num_classes: int, num_keypoints: int | None = None, **kwargs):
        from torchvision.models import detection

        extra = {} if num_keypoints is None else {"num_keypoints": num_keypoints}
        return getattr(detection, name)(weights=None, weights_backbone=None, num_classes=num_classes, **extra, **kwargs)

    return build


def _torchvision(name: str, weights: str, categories: tuple[str, ...], metrics: dict, description: str,
                 **outputs) -> ModelSpec:
    """A registry entry for torchvision's builder ``name`` and its COCO weights (``Enum.member``)."""
    return register(
        ModelSpec(
            name=name,
            description=description,
            build=_builder(name),
            categories=categories,
            default_weights=f"torchvision:{weights}",
            reference_metrics={"COCO-val2017": metrics},
            **outputs,
        )
    )


MASKRCNN = _torchvision(
    "maskrcnn_resnet50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", COCO_CATEGORIES,
    {"box_map": 37.9, "mask_map": 34.6},
    "torchvision Mask R-CNN, ResNet-50-FPN (COCO, 80 classes)", has_masks=True, has_keypoints=False,
)
MASKRCNN_V2 = _torchvision(
    "maskrcnn_resnet50_fpn_v2", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1", COCO_CATEGORIES,
    {"box_map": 47.4, "mask_map": 41.8},
    "torchvision Mask R-CNN v2, ResNet-50-FPN (COCO, 80 classes)", has_masks=True, has_keypoints=False,
)
KEYPOINTRCNN = _torchvision(
    "keypointrcnn_resnet50_fpn", "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1", ("no person", "person"),
    {"box_map": 54.6, "kp_map": 65.0},
    "torchvision Keypoint R-CNN, ResNet-50-FPN (COCO person keypoints)", has_masks=False, has_keypoints=True,
    keypoint_names=COCO_KEYPOINT_NAMES, skeleton=COCO_PERSON_SKELETON,
    oks_sigmas=COCO_PERSON_SIGMAS, keypoint_category_id=1,
)

MASK_AND_KEYPOINT = register(
    ModelSpec(
        name="maskrcnn+keypointrcnn_resnet50_fpn",
        description=(
            "Mask R-CNN and Keypoint R-CNN on the same images; keypoint detections joined to"
            " person instances by box IoU"
        ),
        build=None,
        categories=MASKRCNN.categories,
        has_masks=True,
        has_keypoints=True,
        keypoint_names=KEYPOINTRCNN.keypoint_names,
        skeleton=COCO_PERSON_SKELETON,
        oks_sigmas=COCO_PERSON_SIGMAS,
        keypoint_category_id=1,
        components=("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"),
        reference_metrics={
            "mask": MASKRCNN.reference_metrics,
            "keypoint": KEYPOINTRCNN.reference_metrics,
        },
    )
)
