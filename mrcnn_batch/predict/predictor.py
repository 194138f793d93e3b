"""Batched inference with a registry model, stopping short of torchvision's mask pasting.

torchvision's ``GeneralizedRCNN.forward`` runs transform -> backbone -> rpn -> roi_heads and then
pastes every mask into a full-image tensor. We call the same modules in the same order, resize
boxes and keypoints back to the original image exactly as ``transform.postprocess`` does, and
return the M x M mask probabilities unpasted: ``encode.masks`` pastes and encodes them box by box.
A batch must hold images of one :meth:`Predictor.batch_key` only (see ``predict.batching``):
then each image's detections are those of the model called on it alone.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes, resize_keypoints
from torchvision.ops import box_iou

from mrcnn_batch.models.loaded import LoadedModel
from mrcnn_batch.predict.batching import batch_key


@dataclass
class ImageDetections:
    """One image's kept detections, on the model's device, in score order."""

    boxes: torch.Tensor  # N x 4, (x1, y1, x2, y2), original-image pixels
    scores: torch.Tensor  # N
    labels: torch.Tensor  # N, int64 = category id
    masks: torch.Tensor | None  # N x 1 x M x M probabilities, or None
    # keypoint detections (K of them; for single-network models the same N as above)
    kp_boxes: torch.Tensor | None = None
    kp_scores: torch.Tensor | None = None
    kp_labels: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None  # K x P x 3 (x, y, 1)
    keypoint_scores: torch.Tensor | None = None  # K x P
    kp_instance: np.ndarray | None = None  # K: the matching instance's index, or -1


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class Speed:
    """Switches that trade exactness or portability for speed, off by default (to be measured
    on a GPU before any becomes a default): ``amp`` runs backbone and heads under autocast
    (float16 on CUDA, bfloat16 on CPU; numbers change, so it is part of a run's identity);
    ``channels_last`` stores the backbone's activations NHWC (float noise only)."""

    amp: bool = False
    channels_last: bool = False


@torch.inference_mode()
def forward_raw(
    net: torch.nn.Module, images: list[torch.Tensor], speed: Speed = Speed()
) -> list[dict[str, torch.Tensor]]:
    """torchvision's detector forward without the final mask paste (images: float CHW in [0, 1]).

    Backbone and RPN run on the batch; the RoI heads run image by image (see ``predict.batching``).
    """
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    batch, _ = net.transform(images)  # normalise and resize in float32 either way
    x = batch.tensors.contiguous(memory_format=torch.channels_last) if speed.channels_last else batch.tensors
    device = x.device.type
    with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16, enabled=speed.amp):
        features = net.backbone(x)
        proposals, _ = net.rpn(batch, features)
        detections = []
        for i, (boxes, size) in enumerate(zip(proposals, batch.image_sizes)):
            # the heads see one image's features and RoIs, as for the image alone: the same
            # shapes for their kernels and the same RoI-pool scales, whatever the batch
            own = OrderedDict((name, f[i : i + 1]) for name, f in features.items())
            detections += net.roi_heads(own, [boxes], [size])[0]
    if speed.amp:
        detections = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in detections]
    for det, resized, original in zip(detections, batch.image_sizes, original_sizes):
        det["boxes"] = resize_boxes(det["boxes"], resized, original)
        if "keypoints" in det:
            det["keypoints"] = resize_keypoints(det["keypoints"], resized, original)
    return detections


class Predictor:
    """Runs a loaded model on batches of uint8 RGB images; keeps only the wanted classes."""

    def __init__(
        self, model: LoadedModel, *, device: torch.device, classes: tuple[str, ...] = (), speed: Speed = Speed()
    ):
        if device.type == "cuda":
            # float32 means float32: cuDNN otherwise runs convolutions in TF32 (a 10-bit mantissa),
            # which moves scores by ~1e-2 against the CPU (measured: benchmarks/bench_gpu.py)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            # the same input, the same bits: cuDNN otherwise may pick kernels whose sums run in
            # a varying order, and a keypoint score moved by up to 1.1e-5 from run to run on an
            # H200; its deterministic ones cost no speed there (benchmarks/bench_gpu.py --parts
            # determinism)
            torch.backends.cudnn.deterministic = True
        self.model = model.to(device)
        if speed.channels_last:
            for net in self.model.networks.values():
                net.to(memory_format=torch.channels_last)
        self.device = device
        self.speed = speed
        self.spec = model.spec
        keep = self.spec.keep_labels(classes)
        self.keep_labels = None if keep is None else torch.tensor(keep, dtype=torch.int64)

    def batch_key(self, height: int, width: int) -> tuple:
        """Images of equal keys may share a batch without changing their detections."""
        return batch_key(height, width, [net.transform for net in self.model.networks.values()])

    def __call__(self, arrays: list[np.ndarray | torch.Tensor]) -> list[ImageDetections]:
        """The detections of each image: H x W x 3 uint8 arrays, or 3 x H x W uint8 tensors already
        on the model's device (``read.gpu_decode``)."""
        return self._detect([self._as_input(a) for a in arrays])

    def _as_input(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float C x H x W in [0, 1] on the model's device."""
        if isinstance(a, np.ndarray):
            return torch.from_numpy(a).to(self.device, non_blocking=True).permute(2, 0, 1).float().div_(255)
        if a.device.type == "cuda":  # made on a reader's stream: keep its memory until we are done
            a.record_stream(torch.cuda.current_stream(a.device))
        return a.to(self.device).float().div_(255)

    def _detect(self, images: list[torch.Tensor]) -> list[ImageDetections]:
        nets = self.model.networks
        if "main" in nets:
            return [self._single(d) for d in forward_raw(nets["main"], images, self.speed)]
        masks = forward_raw(nets["mask"], images, self.speed)
        kps = forward_raw(nets["keypoint"], images, self.speed)
        return [self._joined(m, k) for m, k in zip(masks, kps)]

    def _filtered(self, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The detections of the wanted classes only (all of them without --classes)."""
        if self.keep_labels is None:
            return d
        keep = torch.isin(d["labels"], self.keep_labels.to(d["labels"].device))
        return {k: v[keep] for k, v in d.items()}

    def _single(self, d: dict[str, torch.Tensor]) -> ImageDetections:
        d = self._filtered(d)
        out = ImageDetections(d["boxes"], d["scores"], d["labels"], d.get("masks"))
        if "keypoints" in d:
            kp = self._keypoint_rows(d["labels"])
            out.kp_boxes, out.kp_scores, out.kp_labels = d["boxes"][kp], d["scores"][kp], d["labels"][kp]
            out.keypoints, out.keypoint_scores = d["keypoints"][kp], d["keypoints_scores"][kp]
            # same network: the keypoint row is the instance itself (only if it has a mask)
            idx = kp.nonzero().squeeze(1).cpu().numpy()
            out.kp_instance = idx if out.masks is not None else np.full(len(idx), -1)
        return out

    def _keypoint_rows(self, labels: torch.Tensor) -> torch.Tensor:
        cat = self.spec.keypoint_category_id
        return torch.ones_like(labels, dtype=torch.bool) if cat is None else labels == cat

    def _joined(self, m: dict[str, torch.Tensor], k: dict[str, torch.Tensor]) -> ImageDetections:
        m, k = self._filtered(m), self._filtered(k)
        out = ImageDetections(m["boxes"], m["scores"], m["labels"], m.get("masks"))
        out.kp_boxes, out.kp_scores, out.kp_labels = k["boxes"], k["scores"], k["labels"]
        out.keypoints, out.keypoint_scores = k["keypoints"], k["keypoints_scores"]
        people = (m["labels"] == self.spec.keypoint_category_id).nonzero().squeeze(1)
        out.kp_instance = join_by_iou(k["boxes"], m["boxes"][people], people)
        return out


JOIN_MIN_IOU = 0.5


def join_by_iou(kp_boxes: torch.Tensor, inst_boxes: torch.Tensor, inst_index: torch.Tensor) -> np.ndarray:
    """Greedy one-to-one match of keypoint boxes (in score order) to instance boxes by IoU.

    Returns, per keypoint detection, the matched instance's index, or -1 where no unmatched
    instance overlaps it by at least ``JOIN_MIN_IOU``.
    """
    out = np.full(kp_boxes.shape[0], -1, dtype=np.int64)
    if kp_boxes.shape[0] == 0 or inst_boxes.shape[0] == 0:
        return out
    iou = box_iou(kp_boxes, inst_boxes).cpu().numpy()
    index = inst_index.cpu().numpy()
    taken = np.zeros(iou.shape[1], dtype=bool)
    for i in range(iou.shape[0]):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= JOIN_MIN_IOU:
            out[i] = index[j]
            taken[j] = True
    return out
