"""A name-based registry of detection models and the metadata that travels with them.

Each entry says how to build the network (without weights), which weights are its default,
and what its outputs mean: categories (index = label = category id), keypoint names,
skeleton, OKS sigmas, the keypoint category, and published reference metrics. Nothing else in
the package hard-codes a label map.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # the registry is read without torch (names, categories, --classes)
    import torch.nn as nn

# COCO's person keypoint OKS sigmas (cocoapi PythonAPI/pycocotools/cocoeval.py, Params).
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)
# COCO's person skeleton, 1-based keypoint indices (person_keypoints_*.json).
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    ``build(num_classes=..., num_keypoints=..., **transform_kwargs)`` returns the network with
    uninitialised (random) weights; weights are loaded separately (``models.weights``).
    ``categories[i]`` is the name of label ``i``, which is also its category id; placeholder
    labels (background, COCO's unused ids) are named ``"__background__"`` / ``"N/A"``.
    Composite models (mask + keypoint) list their parts in ``components``.
    """

    name: str
    description: str
    build: Callable[..., nn.Module] | None
    categories: tuple[str, ...]
    has_masks: bool
    has_keypoints: bool
    keypoint_names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    oks_sigmas: tuple[float, ...] = ()
    keypoint_category_id: int | None = None
    default_weights: str | None = None  # "torchvision:<Enum>.<member>" or an fsspec URI
    reference_metrics: dict[str, Any] = field(default_factory=dict)
    components: tuple[str, ...] = ()
    default_min_size: int = 800
    default_max_size: int = 1333

    def with_categories(self, categories: tuple[str, ...], **meta: Any) -> "ModelSpec":
        """This spec with a user checkpoint's own categories (and keypoint metadata)."""
        return replace(self, categories=tuple(categories), **meta)

    def category_ids(self) -> dict[str, int]:
        """The real categories by name: label 0 (background, whatever its name: torchvision's
        keypoint model calls it "no person") and the ``N/A`` placeholders left out."""
        return {n: i for i, n in enumerate(self.categories) if i > 0 and n not in PLACEHOLDER_NAMES}

    def keep_labels(self, classes: Sequence[str]) -> tuple[int, ...] | None:
        """The labels ``--classes`` keeps (None: all); an unknown name raises, naming the model's."""
        if not classes:
            return None
        lookup = self.category_ids()
        unknown = [c for c in classes if c not in lookup]
        if unknown:
            raise ValueError(
                f"unknown class name(s) {', '.join(map(repr, unknown))}; the model's categories:"
                f" {', '.join(sorted(lookup))}"
            )
        return tuple(sorted(lookup[c] for c in classes))

    def metadata(self) -> dict[str, Any]:
        """The JSON-able metadata recorded in a run's ``_run.json``."""
        return {
            "name": self.name,
            "categories": [{"id": i, "name": n} for n, i in sorted(self.category_ids().items(), key=lambda kv: kv[1])],
            "has_masks": self.has_masks,
            "has_keypoints": self.has_keypoints,
            "keypoint_names": list(self.keypoint_names),
            "skeleton": [list(e) for e in self.skeleton],
            "oks_sigmas": list(self.oks_sigmas),
            "keypoint_category_id": self.keypoint_category_id,
            "reference_metrics": self.reference_metrics,
        }


PLACEHOLDER_NAMES = ("__background__", "N/A")  # labels that are not categories
_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

