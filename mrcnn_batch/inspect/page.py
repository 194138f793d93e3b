"""An inspection as one self-contained HTML page.

The run report's safety rules, from the same pieces (``mrcnn_batch.webpage``): no script and no
external resource; pictures are PNG ``data:`` URIs and the Content-Security-Policy forbids
loading anything else; every string that comes from the data -- the image URI, model and
category names, keypoint names, weights source, stage names -- goes through ``esc`` before it
reaches the markup; numbers are formatted here.
"""

from __future__ import annotations

import numpy as np

from mrcnn_batch.encode.masks import decode_rle
from mrcnn_batch.inspect import pictures
from mrcnn_batch.inspect.inspection import Inspection
from mrcnn_batch.webpage import card, esc, figure, head, table

MAX_MASKS = 12  # detections whose masks are drawn (the JSON has the numbers of all)
MAX_HEATMAPS = 4  # detections whose keypoint heatmaps are drawn

_CSS = """
main{max-width:1240px}
figcaption{max-width:560px;overflow-wrap:anywhere}
td{white-space:nowrap}td.w{white-space:normal;max-width:520px;overflow-wrap:anywhere}
"""


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.4f}".rstrip("0").rstrip(".")
    return f"{v:.3e}"


def render_page(ins: Inspection, *, top: int = 20) -> str:
    """The page of an inspection; ``top``: proposals drawn."""
    t, spec, rows = ins.trace, ins.spec, ins.instances
    n = len(rows.get("instance_id", []))
    h, w = t.original_size
    parts = [
        head("mrcnn-batch inspect: " + ins.uri, _CSS),
        "<h1>Inside the model, stage by stage</h1>",
        f'<div class="sub">image <code>{esc(ins.uri)}</code></div>',
        f'<div class="sub">model <b>{esc(spec.name)}</b> · weights {esc(ins.weights_source)} (sha256 {esc(ins.weights_sha256[:12])})'
        f" · " + " · ".join(f"{esc(k)} {esc(v)}" for k, v in ins.settings.items()) + "</div>",
        '<div class="cards">' + "".join([
            card(f"{w} × {h}", "image (width × height)"),
            card(f"{t.resized_size[1]} × {t.resized_size[0]}", "resized"),
            card(f"{t.scale[1]:.4g}", "scale"),
            card(f"{sum(lv.anchors for lv in t.levels):,}", "anchors"),
            card(f"{t.rpn['after_nms']:,}", "proposals after NMS"),
            card(f"{n:,}", "detections"),
        ]) + "</div>",
        "<h2>Stages</h2>",
        "<p>Every tensor the forward hooks saw, in the order the network made them.</p>",
        table(["stage", "module", "shape", "dtype", "min", "max", "mean", "note"],
               [(s.name, s.source, " × ".join(map(str, s.shape)) or "scalar", s.dtype, _num(s.min), _num(s.max), _num(s.mean), s.note)
                for s in ins.stages],
               ["", "", "", "", "n", "n", "n", "w"]),
        "<h2>Image metadata</h2>",
        table(["original (h × w)", "resized (h × w)", "batch tensor (h × w, padded)", "scale (rows, columns)"],
               [(f"{h} × {w}", f"{t.resized_size[0]} × {t.resized_size[1]}", f"{t.batch_size[0]} × {t.batch_size[1]}",
                 f"{t.scale[0]:.5g}, {t.scale[1]:.5g}")], ["n"] * 4),
        "<h2>Pyramid levels and anchors</h2>",
        table(["level", "feature map", "stride (batch px)", "anchors per location", "anchors"],
               [(lv.name, " × ".join(map(str, lv.feature_shape)), f"{lv.stride[0]} × {lv.stride[1]}", lv.anchors_per_location,
                 f"{lv.anchors:,}") for lv in t.levels],
               ["", "", "n", "n", "n"]),
        '<div class="grid">' + figure(
            pictures.anchors_picture(ins.image, t.to_original(t.centre_anchors), t.centre_anchor_levels),
            f"the {len(t.centre_anchors)} anchors of the location nearest the image's centre (all sizes and ratios, "
            "coloured by level), in image pixels") + "</div>",
        "<h2>Region proposals</h2>",
        table(["decoded (one per anchor)", "kept for NMS (top per level)", "after NMS", "NMS IoU", "pre-NMS top n per level",
                "post-NMS top n"],
               [(f"{t.rpn['decoded']:,}", f"{t.rpn['kept_for_nms']:,}", f"{t.rpn['after_nms']:,}", t.rpn["nms_iou"],
                 t.rpn["pre_nms_top_n_per_level"], t.rpn["post_nms_top_n"])], ["n"] * 6),
    ]
    k = min(top, len(t.proposals))
    proposals = t.to_original(t.proposals[:k])
    parts.append('<div class="grid">' + figure(
        pictures.proposals_picture(ins.image, proposals, t.proposal_scores[:k]),
        f"the top {k} proposals after NMS, numbered by objectness (thick: probability ≥ 0.5); "
        f"the box head classified {t.rois:,} RoIs") + "</div>")
    parts += _detections(ins)
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _detections(ins: Inspection) -> list[str]:
    rows, spec, kp = ins.instances, ins.spec, ins.keypoints
    n = len(rows.get("instance_id", []))
    out = [f"<h2>Detections ({n:,})</h2>"]
    if not n:
        out.append(f"<p>No detection scored at least {esc(ins.settings['score_threshold'])}.</p>")
    else:
        out.append(table(["#", "label", "category", "score", "x1", "y1", "x2", "y2", "area"],
                          [(i, rows["category_id"][i], rows["category"][i], f"{rows['score'][i]:.4f}",
                            *(f"{v:.1f}" for v in ins.boxes[i]), f"{rows['area'][i]:,.0f}") for i in range(n)],
                          ["n", "n", "w", "n", "n", "n", "n", "n", "n"]))
    keypoints = [np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in kp.get("keypoints", [])]
    captions = [f"{i} {c} {s:.2f}" for i, (c, s) in enumerate(zip(rows.get("category", []), rows.get("score", [])))]
    out.append('<div class="grid">' + figure(
        pictures.detections_picture(ins.image, ins.boxes, rows.get("category_id", []), captions,
                                    keypoints=keypoints, skeleton=spec.skeleton),
        "final detections" + (" and keypoints" if keypoints else "") + ", in image pixels") + "</div>")
    if ins.mask_probabilities is not None and n:
        m = ins.mask_probabilities.shape[-1]
        shown = min(n, MAX_MASKS)
        out.append(f"<h2>Masks ({shown} of {n})</h2>")
        out.append(f"<p>Left: the {m} × {m} mask probabilities of the detection's own label; right: the mask pasted into "
                   f"the image (threshold {esc(ins.settings['mask_threshold'])}) around its box.</p>")
        out.append('<div class="grid">' + "".join(
            figure(pictures.mask_pair(ins.image, ins.boxes[i], ins.mask_probabilities[i], decode_rle(rows["mask"][i])),
                    f"#{i} {rows['category'][i]}: {rows['area'][i]:,.0f} pixels")
            for i in range(shown)) + "</div>")
    heatmaps = ins.trace.heatmaps
    if heatmaps is not None and len(heatmaps):
        shown = min(len(heatmaps), MAX_HEATMAPS)
        names = list(spec.keypoint_names) or [str(j) for j in range(heatmaps.shape[1])]
        out.append(f"<h2>Keypoint heatmaps ({shown} of {len(heatmaps)})</h2>")
        out.append(f"<p>The {heatmaps.shape[-1]} × {heatmaps.shape[-1]} logits of each keypoint in the detection's box, "
                   "each coloured from its own minimum to its maximum. Keypoints: "
                   + esc(", ".join(names)) + ".</p>")
        out.append('<div class="grid">' + "".join(
            figure(pictures.heatmaps_picture(heatmaps[i], names), f"head detection #{i}") for i in range(shown)) + "</div>")
    return out
