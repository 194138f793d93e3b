"""Registry entries for torchvision's Mask R-CNN and Keypoint R-CNN detectors."""

from __future__ import annotations

from torchvision.models.detection import (
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)

from mrcnn_batch.models.registry import (
    COCO_PERSON_SIGMAS,
    COCO_PERSON_SKELETON,
    ModelSpec,
    register,
)


def _builder(fn):
    def build(*, num_classes: int, num_keypoints: int | None = None, **kwargs):
        extra = {} if num_keypoints is None else {"num_keypoints": num_keypoints}
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, **extra, **kwargs)

    return build


_MASK_V1 = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
_MASK_V2 = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
_KPT_V1 = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1

def _torchvision(name: str, fn, weights, description: str, **outputs) -> ModelSpec:
    """A registry entry for a torchvision builder and its COCO weights enum member."""
    return register(
        ModelSpec(
            name=name,
            description=description,
            build=_builder(fn),
            categories=tuple(weights.meta["categories"]),
            default_weights=f"torchvision:{type(weights).__name__}.{weights.name}",
            reference_metrics=dict(weights.meta["_metrics"]),
            **outputs,
        )
    )


MASKRCNN = _torchvision(
    "maskrcnn_resnet50_fpn", maskrcnn_resnet50_fpn, _MASK_V1,
    "torchvision Mask R-CNN, ResNet-50-FPN (COCO, 80 classes)", has_masks=True, has_keypoints=False,
)
MASKRCNN_V2 = _torchvision(
    "maskrcnn_resnet50_fpn_v2", maskrcnn_resnet50_fpn_v2, _MASK_V2,
    "torchvision Mask R-CNN v2, ResNet-50-FPN (COCO, 80 classes)", has_masks=True, has_keypoints=False,
)
KEYPOINTRCNN = _torchvision(
    "keypointrcnn_resnet50_fpn", keypointrcnn_resnet50_fpn, _KPT_V1,
    "torchvision Keypoint R-CNN, ResNet-50-FPN (COCO person keypoints)", has_masks=False, has_keypoints=True,
    keypoint_names=tuple(_KPT_V1.meta["keypoint_names"]), skeleton=COCO_PERSON_SKELETON,
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
