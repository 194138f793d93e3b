"""A registry model built and loaded with its weights, ready for inference.

The weights, not the caller, decide the number of classes and keypoints. A user checkpoint
with its own categories replaces the registry's (``categories`` in the checkpoint dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mrcnn_batch.config import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD
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
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    rpn_proposals: int | None = None,
) -> LoadedModel:
    """The networks of registry entry ``name`` with ``weights``; ``rpn_proposals``: the
    proposals each image keeps after the RPN's NMS (torchvision's ``rpn_post_nms_top_n_test``;
    None keeps the entry's own)."""
    spec = get_spec(name)
    kwargs = dict(
        min_size=min_size or spec.default_min_size,
        max_size=max_size or spec.default_max_size,
        box_score_thresh=score_threshold,
        box_detections_per_img=max_detections,
    )
    if rpn_proposals is not None:
        kwargs["rpn_post_nms_top_n_test"] = rpn_proposals
    networks = {role: _instantiate(part_spec, state, weights.source, kwargs) for role, part_spec, state in _parts(spec, weights)}
    return LoadedModel(effective_spec(spec, weights), networks, weights.sha256, weights.source)


def check_fit(name: str, weights: Weights) -> None:
    """Raise :class:`WeightsUnavailable` unless ``weights`` load into model ``name``: the
    networks are built on the meta device (no memory, no compute) and their parameter names and
    shapes compared, so that a driver refuses unfit weights before any worker starts."""
    for _, part_spec, state in _parts(get_spec(name), weights):
        with torch.device("meta"):
            net = _build(part_spec, state, weights.source, {})
        mismatch = state_mismatch(net, state)
        if mismatch:
            raise WeightsUnavailable(f"weights {weights.source!r} do not fit {part_spec.name!r}: {mismatch}")


def _parts(spec: ModelSpec, weights: Weights) -> list[tuple[str, ModelSpec, dict]]:
    """(role, registry entry, state dict) of each network of a model: one, or two joined."""
    if not spec.components:
        return [("main", spec, weights.state_dict)]
    out = []
    for role, comp in zip(("mask", "keypoint"), spec.components):
        prefix = f"{role}."
        part = {k[len(prefix) :]: v for k, v in weights.state_dict.items() if k.startswith(prefix)}
        if not part:
            raise WeightsUnavailable(
                f"weights {weights.source!r} for {spec.name!r} need keys prefixed '{prefix}'"
                " (a state dict of nn.ModuleDict(mask=..., keypoint=...))"
            )
        out.append((role, get_spec(comp), part))
    return out


def _build(spec: ModelSpec, state: dict, source: str, kwargs: dict) -> nn.Module:
    """The untrained network of ``spec`` shaped as ``state`` says (classes, keypoints)."""
    if _CLS not in state:
        raise WeightsUnavailable(
            f"weights {source!r} do not fit {spec.name!r}: no {_CLS!r} in the state dict"
        )
    extra = {"num_keypoints": state[_KPS].shape[1]} if _KPS in state else {}
    return spec.build(num_classes=state[_CLS].shape[0], **extra, **kwargs)


def _instantiate(spec: ModelSpec, state: dict, source: str, kwargs: dict) -> nn.Module:
    """The network with ``state`` loaded. Built on the meta device and given the loaded tensors
    (cast to the network's own dtypes and made contiguous, as copying them in would): torchvision's
    random initialisation of a network whose every value is then overwritten is most of the cost
    of a build (0.7–1.0 CPU-s for an R50-FPN, against 0.1–0.2). A network that keeps a tensor
    outside its state dict is built the plain way."""
    with torch.device("meta"):
        net = _build(spec, state, source, kwargs)
    own = net.state_dict()
    cast = {k: v.to(own[k].dtype).contiguous() if k in own and isinstance(v, torch.Tensor) else v for k, v in state.items()}
    try:
        net.load_state_dict(cast, strict=True, assign=True)
    except RuntimeError:
        raise WeightsUnavailable(f"weights {source!r} do not fit {spec.name!r}: {state_mismatch(net, state)}") from None
    if _on_meta(net):
        net = _build(spec, state, source, kwargs)
        net.load_state_dict(state, strict=True)
    return net.eval()


def _on_meta(net: nn.Module) -> bool:
    """Whether a tensor of ``net`` (parameter, buffer, or a plain attribute or list of them) is
    still on the meta device."""
    for module in net.modules():
        for value in [*module.parameters(recurse=False), *module.buffers(recurse=False), *vars(module).values()]:
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and t.is_meta:
                    return True
    return False


def state_mismatch(net: nn.Module, state: dict) -> str:
    """What differs between a network's parameters and a state dict, in one short line ("" if
    nothing does)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} keys (e.g. {', '.join(keys[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shapes differ (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model)")
    return "; ".join(parts) + ". Is it a checkpoint of another model? See `mrcnn-batch models`" if parts else ""


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
