"""Train the demo model (``mrcnn_batch.models.demo``) on the synthetic shapes dataset, on CPU.

Reproducible from this script: the training stream is ``generate_sample(seed=--seed, index=k)``
for k = 0, 1, 2, ... (never the held-out seed), the network's initialisation is seeded with
``--seed``, and the learning rate follows a warm-up then a cosine decay over the wall-clock
budget (``--minutes``) or, with ``--iterations``, over a fixed number of iterations (to repeat
a recorded run step for step; ``demo.json`` records the iterations a timed run reached).

Every ``--checkpoint-minutes`` the current weights are written (atomically) to
``<output>/demo.pt``, so a usable model exists whatever happens; ``--resume`` continues from the
full checkpoint (model, optimiser, iteration, elapsed time) in ``--state``. At the end the model
is evaluated with pycocotools on the held-out set (``HELDOUT_SEED``) and ``<output>/demo.json``
records the training facts and the metrics.

    python jobs/train_demo.py --minutes 110 --output mrcnn_batch/models/weights
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from pycocotools import mask as mask_utils

from mrcnn_batch.datasets import shapes as synthetic
from mrcnn_batch.evaluate.reference import coco_ground_truth, cocoeval
from mrcnn_batch.models import demo as demo_model

logger = logging.getLogger("train_demo")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    val_seed: int = 1
    minutes: float = 110.0
    iterations: int | None = None  # fixed-length schedule instead of the wall-clock budget
    batch_size: int = 4
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_iterations: int = 300
    min_lr_fraction: float = 0.02
    grad_clip: float = 10.0
    threads: int = 1
    checkpoint_minutes: float = 10.0
    val_every_minutes: float = 25.0
    val_images: int = 100
    heldout_images: int = 300
    log_every: int = 25


# --------------------------------------------------------------------------- data


def _to_tensors(sample: synthetic.Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
    target = {
        "boxes": torch.from_numpy(sample.boxes),
        "labels": torch.from_numpy(sample.labels),
        "masks": torch.from_numpy(sample.masks).to(torch.uint8),
        "keypoints": torch.from_numpy(sample.keypoints),  # v = 0 for non-triangles: ignored
    }
    return image, target


def _batch(seed: int, start: int, size: int) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for k in range(start, start + size):
        image, target = _to_tensors(synthetic.generate_sample(seed=seed, index=k))
        images.append(image)
        targets.append(target)
    return images, targets


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, *, seed: int, num_images: int) -> dict[str, float]:
    """COCO AP (bbox, segm, keypoints on the triangle category) on ``num_images`` of ``seed``."""
    coco_dict, arrays = synthetic.build_coco(seed=seed, num_images=num_images)
    model.eval()
    results: list[dict[str, Any]] = []
    for info, array in zip(coco_dict["images"], arrays):
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        out = model([image])[0]
        masks = (out["masks"][:, 0] > 0.5).numpy()
        for j in range(len(out["scores"])):
            x0, y0, x1, y1 = (float(v) for v in out["boxes"][j])
            rle = mask_utils.encode(np.asfortranarray(masks[j].astype(np.uint8)))
            label = int(out["labels"][j])
            res = {
                "image_id": info["id"],
                "category_id": label,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(out["scores"][j]),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            }
            if label == synthetic.TRIANGLE_ID:
                kps = out["keypoints"][j].clone()
                kps[:, 2] = 2.0
                res["keypoints"] = [float(v) for v in kps.reshape(-1)]
            results.append(res)
    model.train()
    metrics: dict[str, float] = {}
    gt = coco_ground_truth(coco_dict)
    for iou_type in ("bbox", "segm", "keypoints"):
        subset = [r for r in results if iou_type != "keypoints" or "keypoints" in r]
        if not subset:
            metrics[f"{iou_type}_AP"] = 0.0
            continue
        kp = iou_type == "keypoints"
        ev = cocoeval(gt, subset, iou_type, sigmas=synthetic.OKS_SIGMAS if kp else None,
                      cat_ids=[synthetic.TRIANGLE_ID] if kp else None)
        metrics[f"{iou_type}_AP"] = round(float(ev.stats[0]), 4)
        metrics[f"{iou_type}_AP50"] = round(float(ev.stats[1]), 4)
        metrics[f"{iou_type}_AP75"] = round(float(ev.stats[2]), 4)
    return metrics


# --------------------------------------------------------------------------- training


def _lr_factor(progress: float, iteration: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (iteration + 1) / cfg.warmup_iterations)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return warm * (cfg.min_lr_fraction + (1.0 - cfg.min_lr_fraction) * cos)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_facts(path: Path, facts: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(facts, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg: TrainConfig, *, output: Path, state_path: Path, resume: bool) -> dict[str, Any]:
    if synthetic.HELDOUT_SEED in (cfg.seed, cfg.val_seed):
        raise ValueError(
            f"training seed {cfg.seed} / validation seed {cfg.val_seed}: the held-out seed"
            f" {synthetic.HELDOUT_SEED} must never be used for training or model selection"
        )
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = demo_model.build()
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    iteration, elapsed_before, history = 0, 0.0, []
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        iteration, elapsed_before = int(state["iteration"]), float(state["elapsed"])
        history = json.loads(state["history"])
        logger.info("resumed at iteration %d (%.1f min)", iteration, elapsed_before / 60)

    output.mkdir(parents=True, exist_ok=True)
    weights_path, facts_path = output / "demo.pt", output / "demo.json"
    budget = cfg.minutes * 60.0
    start = time.monotonic() - elapsed_before
    last_ckpt = last_val = time.monotonic()
    running: dict[str, float] = {}
    facts: dict[str, Any] = {}

    def elapsed() -> float:
        return time.monotonic() - start

    def progress() -> float:
        if cfg.iterations:
            return iteration / cfg.iterations
        return elapsed() / budget

    def checkpoint(final: bool = False) -> None:
        nonlocal facts
        _atomic_save(model.state_dict(), weights_path)
        _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "iteration": iteration, "elapsed": elapsed(),
                      "history": json.dumps(history)}, state_path)
        facts = {
            "model": "demo",
            "config": asdict(cfg),
            "heldout_seed": synthetic.HELDOUT_SEED,
            "iterations": iteration,
            "images_seen": iteration * cfg.batch_size,
            "minutes": round(elapsed() / 60, 2),
            "final": final,
            "final_losses": {k: round(v, 4) for k, v in running.items()},
            "validation_history": history,
            "parameters": sum(p.numel() for p in model.parameters()),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "python": platform.python_version()},
        }
        _write_facts(facts_path, facts)
        logger.info("checkpoint at iteration %d -> %s", iteration, weights_path)

    t_log = time.monotonic()
    while progress() < 1.0:
        factor = _lr_factor(progress(), iteration, cfg)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        images, targets = _batch(cfg.seed, iteration * cfg.batch_size, cfg.batch_size)
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {iteration}: "
                                     f"{ {k: v.item() for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        iteration += 1
        for k, v in losses.items():
            value = v.item()
            running[k] = 0.95 * running.get(k, value) + 0.05 * value
        running["total"] = sum(v for k, v in running.items() if k != "total")
        if iteration % cfg.log_every == 0:
            now = time.monotonic()
            logger.info(
                "it %d  %.1f min  lr %.2e  %.2f s/it  %s", iteration, elapsed() / 60,
                cfg.lr * factor, (now - t_log) / cfg.log_every,
                "  ".join(f"{k.replace('loss_', '')} {v:.3f}" for k, v in running.items()),
            )
            t_log = now
        if time.monotonic() - last_val > cfg.val_every_minutes * 60:
            metrics = evaluate(model, seed=cfg.val_seed, num_images=cfg.val_images)
            history.append({"iteration": iteration, "minutes": round(elapsed() / 60, 2),
                            **metrics})
            logger.info("validation (seed %d, %d images) at it %d: %s", cfg.val_seed,
                        cfg.val_images, iteration, metrics)
            last_val = time.monotonic()
        if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
            checkpoint()
            last_ckpt = time.monotonic()

    checkpoint(final=True)
    logger.info("training done: %d iterations in %.1f min; evaluating on the held-out set",
                iteration, elapsed() / 60)
    metrics = evaluate(model, seed=synthetic.HELDOUT_SEED, num_images=cfg.heldout_images)
    facts["heldout_metrics"] = {"num_images": cfg.heldout_images, **metrics}
    _write_facts(facts_path, facts)
    logger.info("held-out metrics (seed %d, %d images): %s", synthetic.HELDOUT_SEED,
                cfg.heldout_images, metrics)
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--val-seed", type=int, default=TrainConfig.val_seed)
    parser.add_argument("--minutes", type=float, default=TrainConfig.minutes)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--val-images", type=int, default=TrainConfig.val_images)
    parser.add_argument("--heldout-images", type=int, default=TrainConfig.heldout_images)
    parser.add_argument("--val-every-minutes", type=float, default=TrainConfig.val_every_minutes)
    parser.add_argument("--checkpoint-minutes", type=float,
                        default=TrainConfig.checkpoint_minutes)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parents[1] / "mrcnn_batch/models/weights")
    parser.add_argument("--state", type=Path, default=Path("/tmp/demo_train_state.pt"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = TrainConfig(
        seed=args.seed, val_seed=args.val_seed, minutes=args.minutes, iterations=args.iterations,
        batch_size=args.batch_size, lr=args.lr, threads=args.threads, val_images=args.val_images,
        heldout_images=args.heldout_images, val_every_minutes=args.val_every_minutes,
        checkpoint_minutes=args.checkpoint_minutes,
    )
    facts = train(cfg, output=args.output, state_path=args.state, resume=args.resume)
    print(json.dumps(facts.get("heldout_metrics", {}), indent=2))


if __name__ == "__main__":
    main()
