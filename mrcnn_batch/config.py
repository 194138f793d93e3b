"""Frozen, typed configuration of a run, passed explicitly from the CLI or API to every stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

# Every default of a run, once: the dataclasses below, the API (make_config, infer) and the CLI
# take them from here.
DEFAULT_MODEL = "maskrcnn_resnet50_fpn"
DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_MASK_THRESHOLD = 0.5
DEFAULT_MAX_DETECTIONS = 100
DEFAULT_BATCH_SIZE = 2
DEFAULT_IO_THREADS = 16
DEFAULT_SHARD_SIZE = 256
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold (0.25 GiB of RGBA)
DEFAULT_MAX_BYTES = 256 * 2**20  # per image file, checked from its size before it is read
IOU_TYPES = ("bbox", "segm", "keypoints")  # COCO's evaluation (and results-file) types, in this order
DEFAULT_REFINE_MASKS: str | None = None  # or "grabcut": mask edges re-cut on the image (encode.refine)


@dataclass(frozen=True)
class InputSpec:
    """What to read: a URL (prefix, glob, manifest, COCO JSON or tar shard(s)) and how."""

    url: str
    image_root: str | None = None  # with a COCO annotations JSON: where its file_names live
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class PredictConfig:
    """Model and prediction settings; the run's identity depends on every field here."""

    model: str = DEFAULT_MODEL
    weights: str | None = None  # fsspec URI of a state dict; None: the registry's default
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS
    rpn_proposals: int | None = None  # proposals per image after the RPN's NMS; None: the model's own
    min_size: int = 800
    max_size: int = 1333
    classes: tuple[str, ...] = ()  # keep only these category names; empty: all
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # autocast (float16 on CUDA, bfloat16 on CPU): faster on GPUs, other numbers
    channels_last: bool = False  # NHWC activations in the backbone: float noise only
    refine_masks: str | None = DEFAULT_REFINE_MASKS  # None | "grabcut" (needs the `refine` extra)


@dataclass(frozen=True)
class ReadConfig:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES  # larger files get status too_large, unread
    exif_transpose: bool = True
    io_threads: int = DEFAULT_IO_THREADS
    gpu_decode: bool = False  # JPEGs decoded by nvJPEG on the CUDA device: other pixels than the CPU's


@dataclass(frozen=True)
class RunConfig:
    input: InputSpec
    output: str
    predict: PredictConfig = PredictConfig()
    read: ReadConfig = ReadConfig()
    shard_size: int = DEFAULT_SHARD_SIZE
    output_storage_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as stored in ``_run.json``: never a storage option (secrets)."""
        d = dataclasses.asdict(self)
        d["input"].pop("storage_options", None)
        d.pop("output_storage_options", None)
        d["predict"]["classes"] = list(self.predict.classes)
        return d

    def identity(self, *, weights_sha256: str) -> dict[str, Any]:
        """What must match for a run directory to be resumed rather than refused.

        Everything that changes which images are planned or what rows they produce; not the
        batch size, device, memory format or I/O threads, which change only how fast (and
        scores in float noise). Mixed precision changes the numbers: it is part of it. Mask
        refinement too, but only when set: runs made before it existed, and every run without
        it, keep the identity they had (see ``IDENTITY_ADDED``).
        """
        p = self.predict
        refine = {} if p.refine_masks is None else {"refine_masks": p.refine_masks}
        proposals = {} if p.rpn_proposals is None else {"rpn_proposals": p.rpn_proposals}
        return {
            "input": self.input.url,
            "image_root": self.input.image_root,
            "shard_size": self.shard_size,
            "model": p.model,
            "weights_sha256": weights_sha256,
            "score_threshold": p.score_threshold,
            "mask_threshold": p.mask_threshold,
            "max_detections": p.max_detections,
            "min_size": p.min_size,
            "max_size": p.max_size,
            "classes": sorted(p.classes),
            "amp": p.amp,
            "max_pixels": self.read.max_pixels,
            "max_bytes": self.read.max_bytes,
            "exif_transpose": self.read.exif_transpose,
            "gpu_decode": self.read.gpu_decode,
            **refine,
            **proposals,
        }


# Identity keys added after runs were first written, with the value those runs had in effect:
# a run made before a key existed resumes when the key now has that value.
# (A key present only when its option is set, like "refine_masks", needs no entry: a run that
# lacks it was made with the option off, and resumes only with it off.)
IDENTITY_ADDED = {"max_bytes": DEFAULT_MAX_BYTES, "gpu_decode": False}


def same_identity(stored: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a run stored with identity ``stored`` is resumed by settings of identity ``now``.
    Paths are compared as :func:`local_url` spells them (runs made before inputs were made
    absolute stored them as typed; read from the folder the command runs in, as then)."""
    stored = {**IDENTITY_ADDED, **stored}
    for key in ("input", "image_root"):
        if isinstance(stored.get(key), str):
            stored[key] = local_url(stored[key])
    return stored == now


def local_url(url: str) -> str:
    """One spelling of a location: a local path (or ``file://`` URL) as an absolute path without
    ``.``, ``..``, ``~``, doubled or trailing slashes, made so on the driver before any worker
    (whose working directory differs) sees it; any other URL as given.
    ``photos/``, ``./photos`` and ``/home/me/photos`` are one input."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif "://" in url:
        return url  # a prefix: "s3://b/photos" also lists photos2/, "s3://b/photos/" does not
    if not url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def is_relative_path(url: str | None) -> bool:
    """A local path that is not absolute (``photos/``, ``~/x`` counts as absolute): where it
    points depends on the working directory of whoever reads it."""
    if not url or "://" in url or "::" in url or url.startswith("torchvision:"):
        return False
    return not os.path.isabs(os.path.expanduser(url))


def missing_local_path(url: str) -> bool:
    """A local path (or ``file://`` URL) that names nothing on this machine; False for object
    storage URLs, chained URLs (``tar://...::``) and globs, which only listing can tell."""
    if "://" in url.replace("file://", "", 1) or "::" in url or any(c in url for c in "*?["):
        return False
    return not os.path.exists(local_url(url))


def local_weights(source: str | None) -> str | None:
    """``--weights`` made absolute where it is a local file (``torchvision:`` names and URLs
    stay as they are)."""
    if source is None or source.startswith("torchvision:") or "://" in source:
        return source
    return local_url(source)


def fingerprint(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
