"""Helpers of the evaluation tests: pycocotools as the reference, generated COCO sets, and
run directories written straight from COCO results (no model involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from mrcnn_batch.schemas import IMAGES, INSTANCES, KEYPOINTS, PLAN, with_metadata
from mrcnn_batch.run.layout import CommitRecord

DATA = Path(__file__).parent / "data" / "coco"
CUSTOM_SIGMAS = [0.05, 0.07, 0.09, 0.04, 0.11]  # a 5-keypoint category that is not COCO's


def ensure_ray() -> None:
    """Share the session's Ray if one is up (the lead's fixture); else start a small one."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def pycoco(gt: dict, results: list, iou_type: str, *, sigmas: list[float] | None = None):
    """pycocotools' COCOeval after evaluate/accumulate/summarize (its printing swallowed)."""
    from mrcnn_batch.evaluate.reference import cocoeval

    return cocoeval(gt, results, iou_type, sigmas=sigmas)


def assert_same_as_pycoco(result, e, *, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(result.stats, e.stats, rtol=0, atol=atol)
    acc = result.accumulated
    np.testing.assert_allclose(acc.precision, e.eval["precision"], rtol=0, atol=atol)
    np.testing.assert_allclose(acc.recall, e.eval["recall"], rtol=0, atol=atol)
    np.testing.assert_allclose(acc.scores, e.eval["scores"], rtol=0, atol=atol)


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


# --------------------------------------------------------------------------- generated sets


def random_case(seed: int, *, iou_type: str, n_images: int = 12) -> tuple[dict, list]:
    """A COCO ground truth and results with crowds, empty images, tied scores, every area
    range, >100 detections in a cell, and (keypoints) a custom 5-keypoint category."""
    rng = np.random.default_rng(seed)
    kp = iou_type == "keypoints"
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 7, "name": "c"}]
    if kp:
        cats = [{"id": 3, "name": "thing", "keypoints": [f"k{i}" for i in range(5)], "oks_sigmas": CUSTOM_SIGMAS}]
    images, anns, results = [], [], []
    ann_id = int(rng.integers(0, 2))  # sometimes an annotation with id 0 (a pycocotools quirk)
    score_pool = np.round(rng.uniform(0, 1, size=6), 2)  # few distinct scores: many ties
    for img_id in rng.choice(np.arange(1, 10_000), size=n_images, replace=False).tolist():
        h, w = (int(v) for v in rng.integers(60, 400, size=2))
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.jpg"})
        n_gt = int(rng.choice([0, 1, 2, 3, 5, 8]))
        gts = []
        for _ in range(n_gt):
            cat = int(rng.choice([c["id"] for c in cats]))
            bw, bh = float(rng.uniform(4, w * 0.8)), float(rng.uniform(4, h * 0.8))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            crowd = int(rng.random() < 0.12)
            area = float(rng.choice([rng.uniform(10, 1024), rng.uniform(1024, 9216), rng.uniform(9216, 40000), bw * bh]))
            a = {"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": [x, y, bw, bh], "area": area, "iscrowd": crowd}
            ann_id += 1
            poly = [x, y, x + bw, y + rng.uniform(0, bh), x + bw * rng.uniform(0.5, 1), y + bh, x, y + bh]
            if crowd and iou_type == "segm":
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                a["segmentation"] = _uncompressed(mask_utils.decode(rle))
            else:
                a["segmentation"] = [poly]
            if kp:
                v = rng.choice([0, 1, 2], size=5, p=[0.3, 0.3, 0.4]) if rng.random() > 0.15 else np.zeros(5, int)
                pts = np.stack([rng.uniform(x, x + bw, 5), rng.uniform(y, y + bh, 5), v], 1)
                pts[v == 0, :2] = 0
                a["keypoints"] = pts.flatten().tolist()
                a["num_keypoints"] = int(np.count_nonzero(v))
            gts.append(a)
        anns.extend(gts)
        if rng.random() < 0.15:
            continue  # an image without predictions
        n_dt = int(rng.choice([0, 2, 5, 12, 30])) if rng.random() > 0.05 else 120
        for j in range(n_dt):
            src = gts[int(rng.integers(len(gts)))] if gts and rng.random() < 0.7 else None
            cat = src["category_id"] if src is not None and rng.random() < 0.9 else int(rng.choice([c["id"] for c in cats]))
            if n_dt == 120:
                cat = cats[0]["id"]
            if src is not None:
                x, y, bw, bh = (float(v) + float(rng.normal(0, 0.08 * s)) for v, s in zip(src["bbox"], (src["bbox"][2], src["bbox"][3]) * 2))
                bw, bh = max(bw, 1.0), max(bh, 1.0)
            else:
                bw, bh = float(rng.uniform(2, w * 0.7)), float(rng.uniform(2, h * 0.7))
                x, y = float(rng.uniform(-5, w - bw)), float(rng.uniform(-5, h - bh))
            score = float(rng.choice(score_pool)) if rng.random() < 0.6 else float(rng.random())
            r = {"image_id": img_id, "category_id": cat, "score": score}
            if iou_type in ("bbox", "segm"):
                r["bbox"] = [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)]
            if iou_type == "segm":
                poly = [x, y, x + bw, y, x + bw * rng.uniform(0.6, 1), y + bh, x, y + bh * rng.uniform(0.6, 1)]
                rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                del r["bbox"]  # mask area, as a segm-only results file gives
            if kp:
                base = np.array(src["keypoints"]).reshape(-1, 3)[:, :2] if src is not None and src["num_keypoints"] else np.stack([rng.uniform(x, x + bw, 5), rng.uniform(y, y + bh, 5)], 1)
                pts = base + rng.normal(0, rng.choice([1, 4, 15]), size=base.shape)
                r["keypoints"] = np.concatenate([pts, np.full((5, 1), 2.0)], 1).flatten().tolist()
            results.append(r)
    if not results:
        img = images[0]
        results.append({"image_id": img["id"], "category_id": cats[0]["id"], "score": 0.5,
                        **({"keypoints": [1.0, 1.0, 2.0] * 5} if kp else {"bbox": [1.0, 1.0, 5.0, 5.0]})})
        if iou_type == "segm":
            rle = mask_utils.merge(mask_utils.frPyObjects([[1, 1, 6, 1, 6, 6, 1, 6]], img["height"], img["width"]))
            results[-1] = {"image_id": img["id"], "category_id": cats[0]["id"], "score": 0.5,
                           "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary mask (as crowd annotations store it)."""
    flat = np.concatenate([[0], mask.flatten(order="F"), [1 - mask.flatten(order="F")[-1]]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    counts = np.diff(np.concatenate([[0], edges]))
    return {"size": list(mask.shape), "counts": counts.tolist()}


# --------------------------------------------------------------------------- run directories


def write_run(
    root: Path,
    gt: dict,
    results: list,
    *,
    shards: list[list[int]],
    kind: str = "instances",
    model: dict | None = None,
    commit: list[int] | None = None,
    run_id: str = "test-run",
    mask_area: bool = True,
    failed: set[int] | frozenset[int] = frozenset(),
) -> Path:
    """A run directory as ``infer`` writes it, from COCO results (one shard per image list).

    ``mask_area``: ``area`` is the mask's pixel count, as ``infer`` writes it (False: the box's).

    ``kind``: "instances" (results with bbox and segmentation) or "keypoints".
    ``commit``: the shards that get a commit marker (default: all).
    ``failed``: images that did not decode (status ``decode_error``, no rows of detections).
    """
    root.mkdir(parents=True, exist_ok=True)
    for d in ("images", "instances", "keypoints", "_commits", "_plan"):
        (root / d).mkdir(exist_ok=True)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    plan_rows = []
    for s, ids in enumerate(shards):
        plan_rows += [{"shard": s, "image_id": i, "uri": f"mem://{i}.jpg"} for i in ids]
    pq.write_table(pa.Table.from_pylist(plan_rows, schema=PLAN), root / "_plan" / "plan.parquet")
    by_img: dict[int, list] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    for s, ids in enumerate(shards):
        if commit is not None and s not in commit:
            continue
        img_rows, inst_rows, kp_rows = [], [], []
        for i in ids:
            rs = [] if i in failed else by_img.get(i, [])
            h, w = sizes[i]
            img_rows.append({"image_id": i, "uri": f"mem://{i}.jpg", "shard": s, "status": "decode_error" if i in failed else "ok",
                             "error": "not an image" if i in failed else None,
                             "width": w, "height": h, "num_instances": len(rs) if kind == "instances" else 0,
                             "num_keypoints": len(rs) if kind == "keypoints" else 0})
            for j, r in enumerate(rs):
                row = {"image_id": i, "instance_id": j, "category_id": r["category_id"],
                       "category": names.get(r["category_id"], "?"), "score": r["score"], "bbox": r["bbox"]}
                if kind == "instances":
                    seg = r.get("segmentation")
                    area = float(mask_utils.area(seg)) if seg is not None and mask_area else float(r["bbox"][2] * r["bbox"][3])
                    inst_rows.append({**row, "area": area,
                                      "mask": None if seg is None else {"size": seg["size"], "counts": seg["counts"]}})
                else:
                    kp_rows.append({**row, "keypoints": r["keypoints"], "keypoint_scores": [1.0] * (len(r["keypoints"]) // 3),
                                    "mask_instance_id": None})
        name = f"shard-{s:06d}"
        rows_of, nbytes = {}, {}
        for table, rows, schema in (("images", img_rows, IMAGES), ("instances", inst_rows, INSTANCES), ("keypoints", kp_rows, KEYPOINTS)):
            path = root / table / f"{name}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=with_metadata(schema, table=table, run_id=run_id)), path)
            rows_of[table], nbytes[table] = len(rows), path.stat().st_size
        record = CommitRecord(shard=s, run_id=run_id, rows=rows_of, bytes=nbytes, status_counts={"ok": len(img_rows)})
        (root / "_commits" / f"{name}.json").write_bytes(record.to_json())
    if commit is None or len(commit) == len(shards):
        (root / "_SUCCESS").write_text("")
    (root / "_run.json").write_text(json.dumps({"run_id": run_id, "model": model or {}}))
    return root


def as_run_results(results: list, *, iou_type: str) -> list:
    """A run's detections exported as a results file of one IoU type (float32 values, as the
    run stores them; ordered by image then instance): what pycocotools reads for the run."""
    f32 = lambda vs: [float(np.float32(v)) for v in vs]  # noqa: E731
    out = []
    for r in sorted(results, key=lambda r: r["image_id"]):
        o = {"image_id": r["image_id"], "category_id": r["category_id"], "score": float(np.float32(r["score"]))}
        if iou_type == "bbox":
            o["bbox"] = f32(r["bbox"])
        elif iou_type == "segm":
            o["segmentation"] = r["segmentation"]
        else:
            o["keypoints"] = f32(r["keypoints"])
        out.append(o)
    return out


def float32_threshold_case() -> tuple[dict, list]:
    """Three images of one box each and a detection whose IoU with it falls on the other side of
    a threshold in float32 arithmetic (all of it, or the detection's sums and products alone):
    0.59999991 / 0.60000008, 0.89999979 / 0.90000006, 0.75000013 / 0.74999993. Every value is a
    float32 (as a run holds it), so the case tells whether float32 boxes are computed with in
    float64, as pycocotools computes."""
    pairs = [([2.843524217605591, 15.701577186584473, 24.13334083557129, 17.269269943237305],
              [5.086123466491699, 14.785320281982422, 30.233081817626953, 19.559167861938477]),
             ([48.08424758911133, 43.13511276245117, 24.952213287353516, 30.721824645996094],
              [47.875770568847656, 43.92240524291992, 23.985431671142578, 30.685720443725586]),
             ([46.51205062866211, 2.0791070461273193, 6.50937557220459, 17.65397834777832],
              [45.924217224121094, 1.7609632015228271, 7.027050971984863, 21.393301010131836])]
    gt_doc = {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
              "categories": [{"id": 1, "name": "a"}],
              "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": g, "area": g[2] * g[3], "iscrowd": 0}
                              for i, (g, _) in enumerate(pairs, 1)]}
    results = [{"image_id": i, "category_id": 1, "score": 0.75, "bbox": d} for i, (_, d) in enumerate(pairs, 1)]
    return gt_doc, results


def with_boxes(results: list) -> list:
    """Results with a bbox each (segm results get their mask's box, keypoint ones their extent)."""
    out = []
    for r in results:
        r = dict(r)
        if "bbox" not in r and "segmentation" in r:
            r["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
        elif "bbox" not in r:
            k = np.array(r["keypoints"]).reshape(-1, 3)
            r["bbox"] = [k[:, 0].min(), k[:, 1].min(), np.ptp(k[:, 0]), np.ptp(k[:, 1])]
        out.append(r)
    return out
