"""The demo network (its registry entry: ``demo.py``): a light ResNet-style trunk trained from
scratch (BatchNorm, four stages at strides 4..32) under a 64-channel FPN, with torchvision's
Mask R-CNN box, mask and keypoint heads."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)

from mrcnn_batch.datasets.shapes import CATEGORIES, KEYPOINT_NAMES
from mrcnn_batch.models.demo import MAX_SIZE, MIN_SIZE

STAGE_CHANNELS = (32, 64, 96, 128)
FPN_CHANNELS = 64


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """A basic ResNet block (two 3x3 convs), with a strided 1x1 shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(cout))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class SmallFPNBackbone(nn.Module):
    """A four-stage ResNet-style trunk (strides 4, 8, 16, 32) under a feature pyramid."""

    def __init__(self, *, stage_channels: tuple[int, ...] = STAGE_CHANNELS,
                 fpn_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        c1 = stage_channels[0]
        self.stem = nn.Sequential(_conv_bn(3, c1 // 2, 2), _conv_bn(c1 // 2, c1, 1))
        stages, cin = [], c1
        for i, cout in enumerate(stage_channels):
            stages.append(nn.Sequential(_Residual(cin, cout, 2), _Residual(cout, cout, 1)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(stage_channels), fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.stem(x)
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            feats[str(i)] = x
        return self.fpn(feats)


def build(*, num_classes: int = len(CATEGORIES), num_keypoints: int | None = len(KEYPOINT_NAMES),
          **kwargs: Any) -> MaskRCNN:
    """The demo network with random weights; ``kwargs`` go to ``MaskRCNN`` (e.g. ``min_size``)."""
    backbone = SmallFPNBackbone()
    levels = ["0", "1", "2", "3"]
    options: dict[str, Any] = dict(
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        rpn_anchor_generator=AnchorGenerator(
            sizes=((16,), (32,), (64,), (128,), (256,)),
            aspect_ratios=((0.5, 1.0, 2.0),) * 5,
        ),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=64,
        box_detections_per_img=50,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, [64, 64, 64, 64], 1,
                                norm_layer=partial(nn.GroupNorm, 8)),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
    )
    options.update(kwargs)
    model = MaskRCNN(backbone, num_classes=None, **options)
    if num_keypoints:
        heads = model.roi_heads
        heads.keypoint_roi_pool = MultiScaleRoIAlign(levels, 14, 2)
        heads.keypoint_head = KeypointRCNNHeads(FPN_CHANNELS, [128] * 4)
        heads.keypoint_predictor = KeypointRCNNPredictor(128, num_keypoints)
    return model
