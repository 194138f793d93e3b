"""Which images may share a batch.

Batches never change results: an image's rows are those of the model called on that image
alone, at any batch size. torchvision's ``GeneralizedRCNNTransform`` resizes each image on its
own, then pads the whole batch up to its largest height and width, rounded up to
``size_divisible``; an image padded beyond what it would get alone sees other features near its
borders (a 2048 x 1365 photo batched with one of another shape moved its top box by ~16 px).
So only images whose resized, padded input tensors have the same shape share a batch: the
batched tensor then holds each image exactly as it would be alone.

The RoI heads would still depend on the batch: torchvision's ``MultiScaleRoIAlign`` infers its
feature scales from the tallest image of the batch (rounded to a power of two, which differs
within one padded shape for images resized under ~68 px high), and the heads' kernels see all
the batch's RoIs at once. So ``predict.predictor.forward_raw`` runs backbone and RPN on the
batch and the heads image by image, as they run for the image alone.

What remains is float noise: a backbone kernel may sum in another order for another batch size,
as it may for another thread count (oneDNN's CPU convolutions do on feature maps of a few
pixels, the smallest FPN levels of small inputs; at min_size 800 they gave the same bits).

:class:`Bucketer` groups images by key as they arrive, in a bounded window: a batch leaves when
it is full, or when the window must move on (then the batch holding the oldest waiting image
leaves, full or not); a lone image runs alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from torchvision.models.detection.transform import GeneralizedRCNNTransform


def resized_shape(height: int, width: int, transform: GeneralizedRCNNTransform) -> tuple[int, int]:
    """(h, w) of an image after ``transform`` resizes it in eval mode.

    torchvision's ``_resize_image_and_masks``: one scale factor, ``min_size / short side``
    capped by ``max_size / long side``, handed to ``interpolate`` with
    ``recompute_scale_factor=True``, which truncates ``side * scale`` to an int.
    """
    if transform.fixed_size is not None:
        return int(transform.fixed_size[1]), int(transform.fixed_size[0])
    min_size = transform.min_size[-1]
    scale = min(min_size / min(height, width), transform.max_size / max(height, width))
    return int(height * scale), int(width * scale)


def padded_shape(height: int, width: int, transform: GeneralizedRCNNTransform) -> tuple[int, int]:
    """(H, W) of the input tensor ``transform`` makes of an ``height`` x ``width`` image alone:
    its resized shape rounded up to ``size_divisible`` (``batch_images``)."""
    h, w = resized_shape(height, width, transform)
    d = transform.size_divisible
    return _round_up(h, d), _round_up(w, d)


def batch_key(height: int, width: int, transforms: Iterable[GeneralizedRCNNTransform]) -> tuple:
    """Images with equal keys may share a batch of every network whose ``transforms`` are given
    (the mask and the keypoint network of a joined model must both agree)."""
    return tuple(padded_shape(height, width, t) for t in transforms)


def _round_up(n: int, d: int) -> int:
    return -(-n // d) * d


class Bucketer:
    """Groups items into batches of equal key, in arrival order, holding at most ``window``.

    ``add`` returns the batches that leave: the item's batch once it holds ``batch_size``
    items, then, while more than ``window`` items wait, the batch holding the oldest waiting
    item. ``drain`` returns every batch still waiting, oldest first. Every item leaves exactly
    once; a batch never mixes keys nor exceeds ``batch_size``.
    """

    def __init__(self, *, batch_size: int, window: int):
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
        self.batch_size = batch_size
        self.window = window
        self._open: dict[Hashable, list[Any]] = {}  # in order of each batch's oldest item
        self._waiting = 0

    def add(self, key: Hashable, item: Any) -> list[list[Any]]:
        batch = self._open.setdefault(key, [])
        batch.append(item)
        self._waiting += 1
        out = []
        if len(batch) >= self.batch_size:
            out.append(self._pop(key))
        while self._waiting > self.window:
            out.append(self._pop(next(iter(self._open))))
        return out

    def drain(self) -> list[list[Any]]:
        return [self._pop(key) for key in list(self._open)]

    def _pop(self, key: Hashable) -> list[Any]:
        batch = self._open.pop(key)
        self._waiting -= len(batch)
        return batch


def plan_batches(keys: Iterable[Hashable], *, batch_size: int, window: int) -> list[list[int]]:
    """The batches (lists of positions in ``keys``) a :class:`Bucketer` makes of ``keys``."""
    bucketer = Bucketer(batch_size=batch_size, window=window)
    out: list[list[int]] = []
    for i, key in enumerate(keys):
        out += bucketer.add(key, i)
    return out + bucketer.drain()
