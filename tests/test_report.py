"""The HTML report: self-contained, every input-derived string escaped, and it loads in a real
browser (headless Chromium, driven over the DevTools protocol on a pipe) with no console error,
no exception and no request leaving the page; a screenshot is taken.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``); the browser tests
skip, saying so, only where it is not installed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_render import make_run
from typer.testing import CliRunner

from mrcnn_batch.datasets.shapes import CATEGORIES, HELDOUT_SEED, write_dataset
from mrcnn_batch.evaluate import COCOEvaluator, load_ground_truth
from mrcnn_batch.evaluate.outputs import write_outputs
from mrcnn_batch.evaluate.predictions import detections_from_results
from mrcnn_batch.export import coco_results
from mrcnn_batch.report import build_report
from mrcnn_batch.run.layout import open_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")

HOSTILE_CAT = '<img src=x onerror="alert(1)">&ellipse'
HOSTILE_URI = "s3://bucket/</table><script>alert('uri')</script>.png"
HOSTILE_ERROR = 'DecodeError: <b>not an image</b> & "quoted" \'single\''


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> str:
    """A run whose category names, URIs and error messages are markup, evaluated."""
    d = tmp_path_factory.mktemp("heldout")
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 3, num_images=6)
    coco["categories"][0]["name"] = HOSTILE_CAT  # the ground truth's name shows in the metrics
    (d / "annotations.json").write_text(json.dumps(coco))
    cats = (CATEGORIES[0], HOSTILE_CAT) + CATEGORIES[2:]
    failures = [{"image_id": 9001, "uri": HOSTILE_URI, "status": "decode_error", "error": HOSTILE_ERROR},
                {"image_id": 9002, "uri": "file:///missing.png", "status": "read_error", "error": "FileNotFoundError: x"}]
    run = make_run(tmp_path_factory.mktemp("run") / "run", coco, d / "images", categories=cats, failures=failures, score=0.7)
    # the failed images are not in the ground truth: evaluate the ok ones, as a results file would be
    types = ("bbox", "segm", "keypoints")
    gt = load_ground_truth(str(d / "annotations.json"), iou_types=types)
    ev = COCOEvaluator(gt, iou_types=types, model_metadata=open_run(run).run_meta().model)
    ev.process({t: detections_from_results(coco_results(open_run(run), iou_type=t), gt=gt, iou_type=t, source="test")
                for t in types}, image_ids=gt.image_ids)
    write_outputs(ev.evaluate(), f"{run}/eval", context={"ground_truth": str(d / "annotations.json"), "run": run})
    return run


def test_every_input_string_is_escaped(hostile_run):
    page = build_report(hostile_run)
    for raw in (HOSTILE_CAT, HOSTILE_URI, HOSTILE_ERROR, "<script>", "<b>not", "onerror=\"alert"):
        assert raw not in page, raw
    for text in ("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;ellipse",
                 "s3://bucket/&lt;/table&gt;&lt;script&gt;alert(&#x27;uri&#x27;)&lt;/script&gt;.png",
                 "DecodeError: &lt;b&gt;not an image&lt;/b&gt; &amp; &quot;quoted&quot; &#x27;single&#x27;"):
        assert text in page, text
    assert "<script" not in page.lower()


def test_page_is_self_contained_and_complete(hostile_run):
    page = build_report(hostile_run)
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "url(" not in page and "@import" not in page
    assert "Content-Security-Policy" in page
    for section in ("Images by status", "Instances per category", "Throughput", "Evaluation", "Sample overlays",
                    "Instance gallery", "Failed images (2)", "precision-recall"):
        assert section in page, section
    assert page.count("data:image/png;base64,") >= 6 + 1 + 3 + 3  # overlays, gallery, PR curves, charts


def test_the_report_imports_no_pandas(hostile_run):
    # a run's tables through Parquet's own reader and statuses off their dictionaries: pandas
    # (which pyarrow.dataset and comparisons with Python strings import) is not needed
    code = ("import sys; from mrcnn_batch.report import build_report; page = build_report(sys.argv[1]); "
            "print(len(page) > 0, 'pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, hostile_run], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]


def test_report_without_eval_says_how(tmp_path):
    d = tmp_path / "ds"
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 4, num_images=2)
    run = make_run(tmp_path / "run", coco, d / "images")
    page = build_report(run)
    assert "Not evaluated" in page and "mrcnn-batch eval" in page


def test_a_report_taken_while_a_run_finishes_is_consistent(tmp_path):
    """The markers are read once: a shard committed (and _SUCCESS written) after that view was
    taken neither half-appears in the tables nor hides the incomplete banner."""
    d = tmp_path / "ds"
    coco = write_dataset(str(d), seed=HELDOUT_SEED + 5, num_images=3)
    run = make_run(tmp_path / "run", coco, d / "images", shard_size=1)
    marker = Path(run) / "_commits" / "shard-000001.json"
    held = marker.read_bytes()
    marker.unlink()  # the view sees 2 of 3 shards ... and _SUCCESS, written by the time it is checked
    page = build_report(run)
    assert "Incomplete run: 2 of 3 shards committed" in page
    marker.write_bytes(held)
    assert "Incomplete run" not in build_report(run)


# --------------------------------------------------------------------------- the browser


class DevTools:
    """Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
    fd 4 out, NUL-separated JSON), so no port and no websocket library are needed."""

    def __init__(self, user_data_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:
            # copies above 4 first: a pipe end may itself be fd 3 or 4 (dup2 onto itself would
            # leave it non-inheritable; one dup2 could overwrite the other end)
            r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,900",
             f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for raw in msgs:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()
                else:
                    self.events.put(msg)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 60) -> dict:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        with self._cv:
            if not self._cv.wait_for(lambda: self._next in self._replies, timeout=timeout):
                raise TimeoutError(f"DevTools: no reply to {method}")
            reply = self._replies.pop(self._next)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - killed below anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)


def load_page(url: str, *, user_data_dir: Path, screenshot: Path) -> dict[str, list]:
    """Open ``url``; return its console errors, exceptions and requests; save a full-page screenshot."""
    tools = DevTools(user_data_dir)
    try:
        target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            tools.call(f"{domain}.enable", session=session)
        tools.call("Page.navigate", {"url": url}, session=session)
        errors, requests, loaded = [], [], False
        deadline = time.monotonic() + 60
        settle = None
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            try:
                ev = tools.events.get(timeout=0.2)
            except queue.Empty:
                continue
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Page.loadEventFired":
                loaded, settle = True, time.monotonic() + 1.0  # late errors still count
            elif method == "Runtime.exceptionThrown":
                details = p["exceptionDetails"]
                errors.append(f'{details.get("text")} {(details.get("exception") or {}).get("description", "")}')
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                errors.append(p["entry"].get("text"))
            elif method == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
            elif method == "Network.loadingFailed":
                errors.append(f"loading failed: {p.get('errorText')}")
        metrics = tools.call("Page.getLayoutMetrics", session=session)
        size = metrics["cssContentSize"]
        shot = tools.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1},
        }, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return {"loaded": [loaded], "errors": errors, "requests": requests, "height": [size["height"]]}
    finally:
        tools.close()


@needs_chromium
def test_report_loads_in_chromium_without_errors(hostile_run, tmp_path):
    from mrcnn_batch.cli import app

    res = CliRunner().invoke(app, ["report", hostile_run, "--out", str(tmp_path / "report.html")])
    assert res.exit_code == 0, res.output
    got = load_page((tmp_path / "report.html").as_uri(), user_data_dir=tmp_path / "profile", screenshot=tmp_path / "report.png")
    assert got["loaded"] == [True]
    assert got["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in got["requests"]), got["requests"]
    assert got["height"][0] > 2000  # the whole page laid out, not an error page
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


@needs_chromium
def test_the_browser_check_sees_errors(tmp_path):
    """The harness itself: a console error, an exception and a blocked external load are caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'unsafe-inline'\"></head><body><img src=\"http://example.invalid/x.png\">"
        "<script>console.error('boom'); undefined_function();</script></body></html>"
    )
    got = load_page(page.as_uri(), user_data_dir=tmp_path / "profile", screenshot=tmp_path / "bad.png")
    text = " | ".join(got["errors"])
    assert "boom" in text and "undefined_function" in text and "example.invalid" in text, text


def test_categories_are_aggregated_through_dictionary_indices_as_by_name():
    """Shards' files carry their own dictionaries; the codes-based aggregation equals the
    aggregation by category name."""
    import numpy as np
    import pyarrow as pa

    from mrcnn_batch.report.facts import (
        category_codes,
        counts_by_category,
        scores_by_category,
    )

    rng = np.random.default_rng(0)
    names = ["person", "dog", "car", "N/A", "zebra"]
    chunks, all_names = [], []
    for k in range(7):
        rows = [names[i] for i in rng.integers(0, 4 if k % 2 else 5, size=int(rng.integers(0, 40)))]
        all_names += rows
        chunks.append(pa.array(rows, pa.string()).dictionary_encode())
    column = pa.chunked_array(chunks, type=pa.dictionary(pa.int32(), pa.string()))
    scores = rng.random(len(all_names)).astype(np.float32)
    got_names, codes = category_codes(column)
    by_name = np.array(all_names, dtype=object)
    want = {n: scores[by_name == n] for n in sorted(set(all_names))}
    got = scores_by_category(got_names, codes, scores)
    assert list(got) == list(want)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n])
    assert counts_by_category(got_names, codes) == {n: int((by_name == n).sum()) for n in sorted(set(all_names))}
    empty = pa.chunked_array([], type=pa.dictionary(pa.int32(), pa.string()))
    assert category_codes(empty)[0] == [] and scores_by_category(*category_codes(empty), np.zeros(0)) == {}


def test_a_slow_run_reports_its_rate_not_zero():
    from mrcnn_batch.report.page import _rate

    assert [_rate(v) for v in (None, 0.0321, 0.5, 4.71, 37.46, 1250.2)] == ["–", "0.032", "0.5", "4.7", "37.5", "1,250"]
