"""Resolving and loading weights: torchvision's names, the package's own, or any fsspec URI.

Sources:

* ``torchvision:<WeightsEnum>.<member>`` (a registry default): from torchvision's cache
  (``$TORCH_HOME/hub/checkpoints``), downloaded there when the machine has internet;
* ``package://mrcnn_batch/<path>``: a file shipped inside this package (the demo model);
* any fsspec URI (``/path/x.pth``, ``s3://models/x.pth``): a state dict, or a checkpoint dict
  ``{"model": state_dict, "categories": [...], "keypoint_names": [...], "skeleton": [...],
  "oks_sigmas": [...], "keypoint_category_id": int}`` carrying a user model's own metadata.

Always loaded with ``torch.load(weights_only=True)``; the SHA-256 of the bytes identifies the run.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:  # torch loads when weights do: the CLI's checks and dry run go without it
    import torch

log = logging.getLogger(__name__)

_META_KEYS = ("categories", "keypoint_names", "skeleton", "oks_sigmas", "keypoint_category_id")


class WeightsUnavailable(RuntimeError):
    """The weights could not be found or read."""


@dataclass(frozen=True)
class Weights:
    source: str
    sha256: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)


def weights_sha256(data: bytes) -> str:
    """What names a file of weights in a run's identity: the SHA-256 of its bytes (no torch)."""
    return hashlib.sha256(data).hexdigest()


def load_weights(source: str, *, storage_options: dict[str, Any] | None = None) -> Weights:
    import torch

    data = read_weight_bytes(source, storage_options=storage_options or {})
    sha = weights_sha256(data)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsUnavailable(
            f"weights {source!r} are not a loadable state dict: {refusal_reason(e)}. They are read "
            "with torch.load(weights_only=True): tensors in dicts, no pickled code; save "
            "model.state_dict() (or a dict holding it under 'model')"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsUnavailable(f"weights {source!r} hold a {type(obj).__name__}, not a dict")
    state = obj.get("model", obj.get("state_dict", obj))
    meta = {k: obj[k] for k in _META_KEYS if k in obj and state is not obj}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"weights {source!r} are not a state dict of tensors")
    return Weights(source=source, sha256=sha, state_dict=state, meta=meta)


# torch's refusals wrap the reason in advice to load with weights_only=False or to allowlist
# globals, which this package never does; the reason alone is kept (sentences naming these go).
_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)")
_NOISE = ("weights_only", "weights only", "safe_globals", "trusted source", "arbitrary code",
          "file an issue", "documentation of torch.load", "do those steps", "weightsunpickler error")


def refusal_reason(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one short clause."""
    text = str(e)
    found = _GLOBAL.search(text)
    if found:
        return f"it pickles {found.group(1)}, which is not a tensor, number, string, list or dict"
    if "TorchScript" in text:
        return "it is a TorchScript archive, not a state dict"
    if "legacy .tar format" in text:
        return "it is in torch's legacy .tar format"
    sentences = re.split(r"(?<=[.:])\s+|\n", text.replace("\x1b[1m", "").replace("\x1b[0m", ""))
    kept = [x.strip() for x in sentences if x.strip() and not any(a in x.lower() for a in _NOISE)]
    reason = " ".join(kept).strip(" .:") or type(e).__name__
    return reason[:200]


def read_weight_bytes(source: str, *, storage_options: dict[str, Any]) -> bytes:
    if source.startswith("torchvision:"):
        return _torchvision_bytes(source)
    if source.startswith("package://"):
        rel = source[len("package://") :]
        package, _, path = rel.partition("/")
        res = importlib.resources.files(package).joinpath(path)
        if not res.is_file():
            raise WeightsUnavailable(f"packaged weights {source!r} are missing from the install")
        return res.read_bytes()
    try:
        with fsspec.open(source, "rb", **storage_options) as f:
            return f.read()
    except FileNotFoundError:
        raise WeightsUnavailable(f"weights file {source!r} does not exist") from None
    except Exception as e:  # noqa: BLE001
        raise WeightsUnavailable(f"cannot read weights {source!r}: {e}") from e


def _torchvision_bytes(source: str) -> bytes:
    import torchvision.models.detection as det
    from torch.hub import get_dir, load_state_dict_from_url

    enum_name, _, member = source[len("torchvision:") :].partition(".")
    weights = getattr(getattr(det, enum_name), member)
    filename = os.path.basename(weights.url)
    cached = os.path.join(get_dir(), "checkpoints", filename)
    if not os.path.exists(cached):
        try:
            load_state_dict_from_url(weights.url, progress=False, weights_only=True)
        except Exception as e:  # noqa: BLE001 - offline machines land here
            raise WeightsUnavailable(
                f"torchvision weights {enum_name}.{member} are not in the cache ({cached}) and"
                f" could not be downloaded ({type(e).__name__}: {e}). On a machine without"
                " internet, copy the file there or pass --weights URI (a state dict on any"
                " fsspec filesystem)."
            ) from None
    with open(cached, "rb") as f:
        return f.read()
