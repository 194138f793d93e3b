"""A registry model built and loaded with its weights, ready for inference.

The weights, not the caller, decide the number of classes and keypoints. A user checkpoint
with its own categories replaces the registry's (``categories`` in the checkpoint dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mrcnn_batch.models.registry import ModelSpec, get_spec
from mrcnn_batch.models.weights import Weights, WeightsUnavailable, load_weights

_CLS = "roi_heads.box_predictor.cls_score.weight"
_KPS = "roi_heads.keypoint_predictor.kps_score_lowres.weight"


@dataclass
class LoadedModel:
    """The networks of one registry entry (one, or mask + keypoint), in eval mode."""

    spec: ModelSpec
    networks: dict[str, nn.Module]  # "main", or "mask" and "keypoint" for composites
    weights_sha256: str
    weights_source: str

    def to(self, device: torch.device) -> "LoadedModel":
        for net in self.networks.values():
            net.to(device)
        return self


def resolve_weights(
    spec: ModelSpec, weights: str | None, *, storage_options: dict[str, Any] | None = None
) -> Weights:
    """The weights of a model: ``weights`` if given, else the registry's default(s)."""
    if weights is not None:
        return load_weights(weights, storage_options=storage_options)
    if spec.components:
        parts = [resolve_weights(get_spec(c), None) for c in spec.components]
        state = {}
        for role, part in zip(("mask", "keypoint"), parts):
            state.update({f"{role}.{k}": v for k, v in part.state_dict.items()})
        sha = "+".join(p.sha256 for p in parts)
        return Weights(source="+".join(p.source for p in parts), sha256=sha, state_dict=state)
    if spec.default_weights is None:
        raise WeightsUnavailable(f"model {spec.name!r} has no default weights; pass --weights URI")
    return load_weights(spec.default_weights)


def build_model(
    name: str,
    weights: Weights,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    score_threshold: float = 0.05,
    max_detections: int = 100,
) -> LoadedModel:
    spec = get_spec(name)
    kwargs = dict(
        min_size=min_size or spec.default_min_size,
        max_size=max_size or spec.default_max_size,
        box_score_thresh=score_threshold,
        box_detections_per_img=max_detections,
    )
    if spec.components:
        networks = {}
        for role, comp in zip(("mask", "keypoint"), spec.components):
            prefix = f"{role}."
            part = {k[len(prefix) :]: v for k, v in weights.state_dict.items() if k.startswith(prefix)}
            if not part:
                raise WeightsUnavailable(
                    f"weights {weights.source!r} for {name!r} need keys prefixed '{prefix}'"
                    " (a state dict of nn.ModuleDict(mask=..., keypoint=...))"
                )
            networks[role] = _instantiate(get_spec(comp), part, weights.source, kwargs)
    else:
        networks = {"main": _instantiate(spec, weights.state_dict, weights.source, kwargs)}
    return LoadedModel(effective_spec(spec, weights), networks, weights.sha256, weights.source)


def _instantiate(spec: ModelSpec, state: dict, source: str, kwargs: dict) -> nn.Module:
    if _CLS not in state:
        raise WeightsUnavailable(
            f"weights {source!r} do not fit {spec.name!r}: no {_CLS!r} in the state dict"
        )
    num_classes = state[_CLS].shape[0]
    extra = {"num_keypoints": state[_KPS].shape[1]} if _KPS in state else {}
    net = spec.build(num_classes=num_classes, **extra, **kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailable(f"weights {source!r} do not fit {spec.name!r}: {e}") from None
    return net.eval()


def effective_spec(spec: ModelSpec, weights: Weights) -> ModelSpec:
    """The registry entry as these weights define it (a user checkpoint's own categories)."""
    if spec.components or _CLS not in weights.state_dict:
        return spec
    num_classes = weights.state_dict[_CLS].shape[0]
    meta = dict(weights.meta)
    categories = meta.pop("categories", None)
    if categories is None and num_classes != len(spec.categories):
        categories = ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    if categories is None and not meta:
        return spec
    categories = tuple(categories) if categories is not None else spec.categories
    if len(categories) != num_classes:
        raise WeightsUnavailable(
            f"weights {weights.source!r} name {len(categories)} categories but predict"
            f" {num_classes} classes (categories must include index 0, '__background__')"
        )
    return spec.with_categories(categories, **{k: _frozen(v) for k, v in meta.items()})


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value
