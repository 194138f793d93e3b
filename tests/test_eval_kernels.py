"""The compiled kernels of evaluation against what they replace: the greedy matching's and
accumulation's numpy passes, pycocotools' ``maskUtils.iou`` / ``area`` / ``frPyObjects`` for
the RLE kernel, and Python's JSON parser for the results reader; each bit for bit. (The rest
of the suite runs the kernels, the default where built, against pycocotools end to end.)"""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from eval_fixtures import random_case
from mrcnn_batch.evaluate import COCOEvaluator
from mrcnn_batch.evaluate import accumulate as accumulation
from mrcnn_batch.evaluate import jsonio, match, similarity
from mrcnn_batch.evaluate.groundtruth import ground_truth_from_dict
from mrcnn_batch.evaluate.predictions import detections_from_results

SEEDS = {"bbox": range(40), "segm": range(16), "keypoints": range(40)}


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here to build them")
def test_the_kernels_are_built_where_a_compiler_is():
    # installing the package builds them; where that silently failed, only the fallbacks would run
    built = {"_accumulate": accumulation.COMPILED, "_rle": similarity.COMPILED, "_results": jsonio._results is not None,
             "_match": match._match is not None, "_oks": match._oks is not None}
    assert all(built.values()), f"not built: {[k for k, v in built.items() if not v]} (pip install -e . shows why)"
CASES = [(t, s) for t, seeds in SEEDS.items() for s in seeds]


def _processed(iou_type, seed):
    gt_doc, results = random_case(seed, iou_type=iou_type)
    gt = ground_truth_from_dict(gt_doc, iou_types=(iou_type,))
    ev = COCOEvaluator(gt, iou_types=(iou_type,))
    ev.process(detections_from_results(results, gt=gt, iou_type=iou_type), image_ids=gt.image_ids)
    return ev


@pytest.mark.skipif(not accumulation.COMPILED, reason="the compiled accumulation kernel was not built (no C compiler)")
@pytest.mark.parametrize("iou_type,seed", CASES)
def test_compiled_accumulation_equals_the_numpy_passes(iou_type, seed):
    ev = _processed(iou_type, seed)
    matches = ev.matches(iou_type)
    kw = {"params": ev.setup.params[iou_type], "category_ids": ev.setup.category_ids[iou_type]}
    kernel = accumulation.accumulate(matches, compiled=True, **kw)
    passes = accumulation.accumulate(matches, compiled=False, **kw)
    for name in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(getattr(kernel, name), getattr(passes, name))
    assert (kernel.precision >= 0).any()  # the sets are not trivial


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
@pytest.mark.parametrize("seed", SEEDS["segm"])
def test_segm_matching_by_the_kernel_equals_pycocotools_iou(seed, monkeypatch):
    kernel = _processed("segm", seed).matches("segm")
    monkeypatch.setattr(match, "COMPILED_RLE", False)  # maskUtils.iou, image by image
    reference = _processed("segm", seed).matches("segm")
    for name in ("image_id", "rank", "score", "codes", "npig"):
        np.testing.assert_array_equal(getattr(kernel, name), getattr(reference, name))
    assert (kernel.outcomes() == match.CODE_TP).any()


@pytest.mark.skipif(match._match is None, reason="the compiled matching kernel was not built (no C compiler)")
@pytest.mark.parametrize("iou_type,seed", CASES)
def test_greedy_matching_by_the_kernel_equals_the_numpy_loop(iou_type, seed, monkeypatch):
    kernel = _processed(iou_type, seed).matches(iou_type)
    monkeypatch.setattr(match, "_match", None)  # the numpy loop, and np.lexsort for the order
    monkeypatch.setattr(match, "_oks", None)
    reference = _processed(iou_type, seed).matches(iou_type)
    for name in ("category_index", "image_id", "rank", "score", "codes"):
        np.testing.assert_array_equal(getattr(kernel, name), getattr(reference, name))
    assert (kernel.outcomes() == match.CODE_TP).any()


@pytest.mark.parametrize("iou_type,seed", [(t, s) for t, seeds in SEEDS.items() for s in list(seeds)[:8]])
@pytest.mark.parametrize("block", [1, 5])
def test_matching_in_blocks_of_detections_equals_matching_at_once(iou_type, seed, block, monkeypatch):
    whole = _processed(iou_type, seed).matches(iou_type)
    monkeypatch.setattr(match, "_BLOCK_DETECTIONS", block)  # groups cut apart into many blocks, never split
    blocks = _processed(iou_type, seed).matches(iou_type)
    for name in ("category_index", "image_id", "rank", "score", "codes", "npig"):
        np.testing.assert_array_equal(getattr(blocks, name), getattr(whole, name))
    assert (whole.outcomes() == match.CODE_TP).any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=60), st.lists(st.integers(0, 30), max_size=60), st.integers(1, 20))
def test_blocks_cover_both_key_lists_and_cut_only_between_groups(d_key, g_key, size):
    d_key, g_key = np.sort(np.array(d_key, np.int64)), np.sort(np.array(g_key, np.int64))
    blocks = match._blocks(d_key, g_key, size)
    for k, at in ((0, d_key), (1, g_key)):
        cuts = [b[k] for b in blocks]
        assert cuts[0][0] == 0 and cuts[-1][1] == len(at) and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    for (d0, d1), (g0, g1) in blocks:  # a group's detections and objects are in one block
        keys = set(d_key[d0:d1].tolist())
        assert not keys & set(d_key[:d0].tolist()) and not keys & set(d_key[d1:].tolist())
        assert all(g0 <= i < g1 for i in np.flatnonzero(np.isin(g_key, list(keys))))


@pytest.mark.skipif(match._match is None, reason="the compiled matching kernel was not built (no C compiler)")
@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 50), st.integers(0, 2), st.integers(0, 2**32 - 1),
       st.lists(st.sampled_from([np.int32, np.int64]), min_size=3, max_size=3))
def test_detection_order_is_lexsort(n, groups, n_ties, seed, dtypes):
    rng = np.random.default_rng(seed)
    key = rng.integers(0, groups, n).astype(dtypes[0])  # keys and ties read as int32 or int64, as held
    score = np.round(rng.random(n), 1)  # many equal scores
    ties = [rng.integers(-3, 4, n).astype(d) for d in dtypes[1:1 + n_ties]]
    np.testing.assert_array_equal(match.detection_order(key, score, *ties, groups=groups),
                                  np.lexsort((*reversed(ties), -score, key)))


@pytest.mark.skipif(match._oks is None, reason="the compiled OKS kernel was not built (no C compiler)")
@pytest.mark.parametrize("seed", SEEDS["keypoints"])
def test_oks_terms_by_the_kernel_give_numpys_oks(seed, monkeypatch):
    seen = []
    oks_pairs = match._oks_pairs
    monkeypatch.setattr(match, "_oks_pairs", lambda *a: seen.append(oks_pairs(*a)) or seen[-1])
    _processed("keypoints", seed)
    monkeypatch.setattr(match, "_oks", None)
    _processed("keypoints", seed)
    kernel, numpy_only = seen
    np.testing.assert_array_equal(kernel, numpy_only)
    assert (kernel > 0.5).any()


@pytest.mark.skipif(match._oks is None, reason="the compiled OKS kernel was not built (no C compiler)")
@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_keypoint_extents_by_the_kernel_equal_numpys(seed, labelled_only):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, rng.integers(1, 30))  # keypoints per row, some rows with none
    offsets = np.r_[0, np.cumsum(3 * counts)].astype(np.int64)
    values = rng.choice([-5.0, 0.0, 1.5, 7.25, 1e9, 0.1, np.nan, np.inf, -np.inf], int(offsets[-1]))
    values[2::3] = rng.choice([-1.0, 0.0, 1.0, 2.0, np.nan], len(values[2::3]))  # visibility
    values = values.astype(rng.choice([np.float32, np.float64]))  # (a run's keypoints stay float32)
    rows = rng.integers(0, len(counts), rng.integers(0, 40))
    kernel = match._extent(offsets, values, rows, labelled_only=labelled_only)
    oks = match._oks
    match._oks = None
    try:
        numpy_only = match._extent(offsets, values, rows, labelled_only=labelled_only)
    finally:
        match._oks = oks
    for a, b in zip(kernel, numpy_only):
        np.testing.assert_array_equal(a, b)


def _strings(rles):
    return pa.array([r["counts"] for r in rles], pa.binary())


@st.composite
def masks(draw):
    """Masks of a few sizes: random blobs, empty, full, a single pixel, ones at either end."""
    sizes = [(draw(st.integers(1, 40)), draw(st.integers(1, 40))) for _ in range(2)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(draw(st.integers(1, 8))):
        h, w = sizes[draw(st.integers(0, 1))]
        kind = draw(st.sampled_from(["blob", "noise", "empty", "full", "pixel", "ends"]))
        m = np.zeros((h, w), np.uint8)
        if kind == "blob":
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = 1
        elif kind == "noise":
            m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        elif kind == "full":
            m[:] = 1
        elif kind == "pixel":
            m[rng.integers(0, h), rng.integers(0, w)] = 1
        elif kind == "ends":
            m[0, 0] = m[-1, -1] = 1
        out.append(mask_utils.encode(np.asfortranarray(m)))
    return out


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
@settings(max_examples=200, deadline=None)
@given(masks(), masks(), st.data())
def test_pair_iou_and_area_are_pycocotools(dt, gt, data):
    crowd = np.array(data.draw(st.lists(st.booleans(), min_size=len(gt), max_size=len(gt))))
    pd, pg = (v.reshape(-1) for v in np.meshgrid(np.arange(len(dt)), np.arange(len(gt)), indexing="ij"))
    ours = similarity.pair_mask_iou(_strings(dt), np.array([r["size"] for r in dt]), _strings(gt),
                                    np.array([r["size"] for r in gt]), pd, pg, crowd)
    theirs = np.asarray(mask_utils.iou(dt, gt, crowd.astype(int).tolist()), np.float64).reshape(len(dt), len(gt))
    np.testing.assert_array_equal(ours.reshape(len(dt), len(gt)), theirs)  # -1 where sizes differ
    np.testing.assert_array_equal(similarity.rle_areas(_strings(dt)), mask_utils.area(dt).astype(np.int64))


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
def test_table_areas_by_the_kernel_equal_pycocotools(monkeypatch):
    from mrcnn_batch.evaluate import predictions

    rng = np.random.default_rng(5)
    rles = [mask_utils.encode(np.asfortranarray((rng.random((30, 20)) < p).astype(np.uint8))) for p in rng.random(300)]
    counts, sizes = _strings(rles), np.array([r["size"] for r in rles])
    kernel = predictions.table_rle_area(counts, sizes, block=64)
    monkeypatch.setattr(predictions, "COMPILED_RLE", False)
    np.testing.assert_array_equal(kernel, predictions.table_rle_area(counts, sizes, block=64))
    assert kernel.dtype == np.float64 and kernel.sum() > 0


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
def test_a_malformed_string_is_an_error_not_a_number():
    good = mask_utils.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
    bad = pa.array([b"0" * 20, b"\x7f!"], pa.binary())
    with pytest.raises(ValueError, match="malformed"):
        similarity.rle_areas(bad)
    with pytest.raises(ValueError, match="malformed"):
        similarity.pair_mask_iou(bad, np.array([[4, 4], [4, 4]]), _strings([good]), np.array([[4, 4]]),
                                 np.array([0, 1]), np.array([0, 0]), np.array([False]))


@st.composite
def polygons(draw):
    """Polygons of 3-12 points: inside the image, on whole and half pixels, far outside it,
    and with repeated points (an edge of no length)."""
    h, w = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    k = draw(st.integers(3, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["inside", "whole", "half", "outside", "repeated"]))
    if kind == "whole":
        xy = rng.integers(-5, max(w, h) + 5, size=2 * k).astype(float)
    elif kind == "half":
        xy = rng.integers(-10, 2 * max(w, h) + 10, size=2 * k) / 2
    elif kind == "outside":
        xy = rng.uniform(-100, 400, size=2 * k)
    elif kind == "repeated":
        xy = np.repeat(rng.uniform(-2, max(w, h), size=k), 2)[: 2 * k]
        xy[::4] = xy[1::4]
    else:
        xy = np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k)], 1).reshape(-1)
    return xy.tolist(), h, w


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
@settings(max_examples=300, deadline=None)
@given(st.lists(polygons(), min_size=1, max_size=4))
def test_polygons_rasterised_as_pycocotools_does(items):
    ours, done = similarity.polygon_rles([p for p, _, _ in items], np.array([[h, w] for _, h, w in items]))
    assert done.all()
    assert ours.to_pylist() == [mask_utils.frPyObjects([p], h, w)[0]["counts"] for p, h, w in items]


@pytest.mark.skipif(not similarity.COMPILED, reason="the compiled RLE kernel was not built (no C compiler)")
def test_polygons_far_out_are_left_to_pycocotools():
    # 5 x 1e9 overflows pycocotools' int conversion: the kernel does not guess what that gives
    polys = [[0, 0, 10, 0, 10, 10.0], [0, 0, 1e9, 0, 10, 10.0], [0, 0, float("nan"), 0, 10, 10.0], [1, 1, 5, 1, 5, 5.0]]
    strings, done = similarity.polygon_rles(polys, np.array([[20, 20]] * 4))
    assert done.tolist() == [True, False, False, True]
    assert strings.to_pylist()[3] == mask_utils.frPyObjects([polys[3]], 20, 20)[0]["counts"]


# -- the compiled reader of results files ----------------------------------------------------------
needs_reader = pytest.mark.skipif(jsonio._results is None, reason="the compiled results reader was not built (no C compiler)")


@needs_reader
@pytest.mark.parametrize("text", [
    "0", "-0", "-0.0", "1e5", "1E-5", "0.1", "4.35", "0.30000000000000004", "1.0000000000000002", "0.1e1",
    "123456789012345678901234567890", "1.7976931348623157e308", "5e-324", "2.2250738585072014e-308", "1e400",
    "-1e400", "9007199254740993", "9007199254740993.0", "0.6499999761581421", "596.2100219726562", "1e-400",
    "12345678901234567890123e-10", "0.000000000000000000000000000001234", "3.14159265358979323846264338327950288",
    "255.50999450683594", "9007199254740995", "1152921504606846977", "9999999999999999999e-27", "1e27",
    "18446744073709551615e-3", "1234567890123456789e8", "4611686018427387905e-1",
    # rounded once to 64 bits these land halfway between two doubles (a second rounding errs)
    "8173798036672283551e-18", "1709031801850281894e-25", "2041731169690743275e-11", "6073355938377269102e-24",
])
def test_numbers_are_read_as_pythons_parser_reads_them(text):
    doc = f'[{{"image_id": 1, "category_id": 2, "score": {text}, "bbox": [{text}, 0, 1, 2]}}]'
    table = jsonio.compiled_results_table(doc.encode())
    expected = float(json.loads(doc)[0]["score"])  # as the float columns hold it
    for got in (table["score"][0].as_py(), table["bbox"][0].as_py()[0]):
        assert got == expected and np.signbit(got) == np.signbit(expected), text


def _digits(x: float, style: int) -> str:
    """x written as people and programs write it: repr, 17 / 19 significant digits, or a long
    integer mantissa with an exponent (the reader's paths: Clinger's, the wide one, strtod)."""
    if style == 0:
        return repr(x)
    if style in (1, 2):
        return f"{x:.{16 if style == 1 else 18}e}"
    mantissa, exponent = f"{x:.18e}".split("e")
    return f"{int(mantissa.replace('.', ''))}e{int(exponent) - 18}"  # (int: no leading zeros, as JSON asks)


@needs_reader
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.floats(width=32, allow_nan=False, allow_infinity=False)
                | st.decimals(allow_nan=False, allow_infinity=False, places=20).map(float),
                min_size=1, max_size=20),
       st.integers(0, 3))
def test_long_numbers_are_read_as_pythons_parser_reads_them(values, style):
    texts = [_digits(v, style) for v in values]
    doc = "[" + ",".join(f'{{"image_id": 1, "category_id": 2, "score": 0, "keypoints": [{t}, 0, 1]}}' for t in texts) + "]"
    got = jsonio.compiled_results_table(doc.encode())["keypoints"].combine_chunks().flatten().to_numpy()[0::3]
    want = np.array([float(t) for t in texts])
    np.testing.assert_array_equal(got, want)
    assert (np.signbit(got) == np.signbit(want)).all()


@needs_reader
@pytest.mark.parametrize("doc", [
    '[{"image_id": 9223372036854775808, "category_id": 2, "score": 0.5}]',  # past int64
    '[{"image_id": 1.0, "category_id": 2, "score": 0.5}]',
    '[{"image_id": 1, "category_id": 2, "score": true}]',
    '[{"image_id": 1, "category_id": 2, "score": NaN}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "score": 0.6}]',  # a repeated key
    '[{"image_id": 1, "category_id": 2, "score": 0.5}, {"image_id": 1, "category_id": 2}]',  # a field some lack
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1, 2]}, {"image_id": 1, "category_id": 2, "score": 0.5}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": [[1, 2, 3, 4, 5, 6]]}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [2, 2], "counts": [0, 4]}}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [2, 2], "counts": "04", "x": 1}}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "sc\\u006fre": 0.6}]',  # an escaped key ("score" again)
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "note": "\\x"}]',  # not an escape of JSON
    '[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": {"size": [2, 2], "counts": "0\\n4"}}]',
    '[{"image_id": 1, "category_id": 2, "score": 0.5}', '[{"image_id": 1, "category_id": 2, "score": 0.5}] x',
    '[{"image_id": 01, "category_id": 2, "score": 0.5}]', '[]', '{}', '',
])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 23])  # read a byte at a time, in pieces, whole
def test_what_the_reader_does_not_take_goes_to_the_slower_paths(doc, chunk):
    assert jsonio.compiled_results_table(doc.encode(), chunk=chunk) is None


@st.composite
def results_documents(draw):
    """Results lists (one kind of field each) written with random separators, indentation,
    key order and extra fields."""
    kind = draw(st.sampled_from(["bbox", "segm", "keypoints", "segm with boxes"]))
    number = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=64),
                       st.floats(allow_nan=False, allow_infinity=False, width=32))
    extra = st.recursive(st.one_of(st.none(), st.booleans(), number, st.text(max_size=5)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                         max_leaves=6)
    results = []
    for _ in range(draw(st.integers(1, 6))):
        r = {"image_id": draw(st.integers(-2**63, 2**63 - 1)), "category_id": draw(st.integers(0, 100)), "score": draw(number)}
        if kind in ("bbox", "segm with boxes"):
            r["bbox"] = draw(st.lists(number, min_size=4, max_size=4))
        if kind.startswith("segm"):
            r["segmentation"] = {"size": [draw(st.integers(1, 99)), draw(st.integers(1, 99))],
                                 "counts": draw(st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=12))}
        if kind == "keypoints":
            r["keypoints"] = draw(st.lists(number, max_size=9))
        for key in draw(st.lists(st.sampled_from(["id", "area", "note", "iscrowd"]), max_size=2, unique=True)):
            r[key] = draw(extra)
        keys = draw(st.permutations(list(r)))
        results.append({k: r[k] for k in keys})
    indent = draw(st.sampled_from([None, 0, 2]))
    seps = draw(st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]))
    return json.dumps(results, indent=indent, separators=seps)


@needs_reader
@settings(max_examples=300, deadline=None)
@given(results_documents())
def test_the_reader_gives_the_parsed_documents_values(doc):
    table = jsonio.compiled_results_table(doc.encode())
    assert table is not None
    parsed = json.loads(doc)
    rows = table.to_pylist()
    assert len(rows) == len(parsed)
    for got, want in zip(rows, parsed):
        for key, value in got.items():
            if key == "segmentation":
                assert value == want[key]
            else:
                assert value == want[key] and np.signbit(value).tolist() == np.signbit(want[key]).tolist(), key


@needs_reader
@settings(max_examples=200, deadline=None)
@given(results_documents(), st.data())
def test_the_reader_gives_the_same_table_whatever_the_pieces(doc, data):
    # the file is read a piece at a time: a result cut anywhere (inside a number, a string, a key,
    # between a result and its comma) is read again whole with the next piece
    data_bytes = doc.encode()
    chunk = data.draw(st.integers(1, len(data_bytes) + 1), label="chunk")
    whole = jsonio.compiled_results_table(data_bytes, chunk=len(data_bytes) + 1)
    assert jsonio.compiled_results_table(data_bytes, chunk=chunk).equals(whole)


class _Pieces:
    """A binary file that records the sizes asked of read."""

    def __init__(self, data: bytes):
        self.data, self.at, self.asked = data, 0, []

    def read(self, n: int) -> bytes:
        self.asked.append(n)
        out = self.data[self.at:self.at + n]
        self.at += len(out)
        return out


@needs_reader
def test_the_reader_holds_the_file_a_piece_at_a_time_and_leaves_long_results_to_the_slower_paths():
    rows = [{"image_id": i, "category_id": 1, "score": 0.5, "bbox": [i, 0, 1, 2], "note": "x" * (10 if i != 7 else 500)}
            for i in range(20)]
    doc = json.dumps(rows).encode()
    f = _Pieces(doc)
    table = jsonio.compiled_results_table(f, chunk=64)
    assert table["image_id"].to_pylist() == list(range(20)) and table.equals(jsonio.compiled_results_table(doc))
    assert set(f.asked) == {64} and len(f.asked) == -(-len(doc) // 64) + 1  # to the end, and the empty read there
    # a result that does not read with `longest` bytes from its start on: None (the slower paths read it)
    assert jsonio.compiled_results_table(doc, chunk=64, longest=400) is None
    assert jsonio.compiled_results_table(doc, chunk=64, longest=600).equals(table)
    assert jsonio.compiled_results_table(doc[:-1] + b" , ]", chunk=64) is None  # malformed at the end


class _IntoPieces(_Pieces):
    """A binary file with readinto, which fills at most ``most`` bytes a call (as a pipe may) and
    keeps the last view it was given."""

    def __init__(self, data: bytes, most: int):
        super().__init__(data)
        self.most, self.view = most, None

    def read(self, n: int) -> bytes:
        raise AssertionError("read() called where readinto() is there")

    def readinto(self, view: memoryview) -> int:
        self.asked.append(len(view))
        out = self.data[self.at:self.at + min(len(view), self.most)]
        view[:len(out)] = out
        self.at, self.view = self.at + len(out), view
        return len(out)


@needs_reader
@pytest.mark.parametrize("most", [1, 7, 64, 1000])
def test_the_reader_fills_its_window_through_readinto_short_reads_too(most):
    rows = [{"image_id": i, "category_id": 1, "score": 0.5, "keypoints": [i, 0.25, 2] * 3} for i in range(30)]
    doc = json.dumps(rows).encode()
    f = _IntoPieces(doc, most)
    assert jsonio.compiled_results_table(f, chunk=64).equals(jsonio.compiled_results_table(doc, chunk=len(doc) + 1))
    assert set(f.asked) == {64} and f.view is not None  # (read through readinto alone)
    with pytest.raises(ValueError):  # the reader's memory, released: a view the file kept reads nothing
        f.view[0]


def test_read_results_reads_compressed_and_declined_files_as_before(tmp_path):
    import gzip

    from mrcnn_batch.evaluate.jsonio import ResultColumns
    from mrcnn_batch.evaluate.jsonio import read_results as read_columns

    def read_results(url: str):  # the columns as Arrow's table, to compare
        doc = read_columns(url)
        return doc.table() if isinstance(doc, ResultColumns) else doc

    rows = [{"image_id": i, "category_id": 1, "score": 0.25 * i, "bbox": [i, 0.5, 1, 2]} for i in range(50)]
    plain, packed = tmp_path / "r.json", tmp_path / "r.json.gz"
    plain.write_text(json.dumps(rows))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_results(str(packed)).equals(read_results(str(plain)))
    assert read_results(str(plain)).to_pylist() == rows
    rows[3]["score"] = float("nan")  # declined by the compiled reader: Python's parser reads it
    plain.write_text(json.dumps(rows))
    got = read_results(str(plain))
    assert np.isnan(got["score"][3].as_py()) if isinstance(got, pa.Table) else np.isnan(got[3]["score"])


# -- the compiled reader of ground truth (bbox / keypoints: no masks) --------------------------------
def _ground_truths_agree(tmp_path, doc, iou_type, text=None):
    """load_ground_truth (compiled where it takes the file) against the parsed document read
    itemwise: the same columns, or the same error."""
    from mrcnn_batch.evaluate.errors import EvalInputError
    from mrcnn_batch.evaluate.groundtruth import load_ground_truth

    path = tmp_path / "gt.json"
    path.write_text(text if text is not None else json.dumps(doc))

    def outcome(build):
        try:
            return build()
        except EvalInputError as e:
            return str(e)

    got = outcome(lambda: load_ground_truth(str(path), iou_types=(iou_type,)))
    want = outcome(lambda: ground_truth_from_dict(jsonio.read_json(str(path), what="ground truth"), iou_types=(iou_type,),
                                                  source=str(path)))
    if isinstance(want, str):
        assert got == want
        return
    for k, v in vars(want).items():
        if isinstance(v, np.ndarray):
            assert getattr(got, k).dtype == v.dtype and np.array_equal(getattr(got, k), v, equal_nan=True), k
        else:
            assert getattr(got, k) == v, k


@needs_reader
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bbox", "keypoints"]), st.sampled_from([None, 1, "\t"]), st.booleans())
def test_ground_truth_read_compiled_equals_the_parsed_document(tmp_path_factory, seed, iou_type, indent, shuffle):
    doc, _ = random_case(seed, iou_type=iou_type, n_images=8)
    rng = np.random.default_rng(seed)
    doc["info"] = {"description": "x", "nested": [1, {"a": None, "b": [True, False, "é\\n"]}]}  # skipped
    for a in doc["annotations"]:
        if shuffle:  # any key order, extra fields, masks as RLE
            keys = list(a)
            rng.shuffle(keys)
            a.update({k: a.pop(k) for k in keys})
            a["extra"] = {"score": 1.5e300, "tags": ["a", "b"]}
        if rng.random() < 0.3:
            a["segmentation"] = {"size": [4, 5], "counts": "0\\\\2\"1"}
    data = json.dumps(doc, indent=indent)
    assert jsonio.compiled_ground_truth(data.encode()) is not None  # this path is the one tested
    _ground_truths_agree(tmp_path_factory.mktemp("gt"), doc, iou_type)


@needs_reader
@pytest.mark.parametrize("change", [
    lambda d: d["annotations"][0].update(iscrowd=True),  # bools: left to the parser
    lambda d: d["annotations"][0].update(id=1.0),  # a float id: the itemwise loop words it
    lambda d: d["annotations"][0].pop("bbox"),
    lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
    lambda d: d["annotations"][0].update(image_id=10**6),  # unknown image
    lambda d: d["annotations"][0].update(category_id=99),  # unknown category
    lambda d: d["annotations"][0].update(id=2**70),  # beyond 64 bits
    lambda d: d["annotations"][0].update(keypoints=[1, 2, 2, 4]),  # not of its category's length
    lambda d: d["annotations"][0].pop("keypoints"),  # missing where its category has them
    lambda d: d["annotations"][0].update(num_keypoints=True),
    lambda d: d["annotations"][0].update(area="12"),
    lambda d: d.pop("categories"),
    lambda d: d["images"].append(dict(d["images"][0])),  # a duplicate image id
])
def test_ground_truth_the_compiled_reader_declines_reads_as_before(tmp_path, change):
    doc, _ = random_case(3, iou_type="keypoints", n_images=6)
    doc["annotations"][0]["keypoints"] = doc["annotations"][0].get("keypoints") or [0] * 15
    doc["annotations"][0]["num_keypoints"] = doc["annotations"][0].get("num_keypoints", 0)
    change(doc)
    _ground_truths_agree(tmp_path, doc, "keypoints")


@needs_reader
@pytest.mark.parametrize("text", [
    '{"images": [], "categories": [], "annotations": [], "images": []}',  # a repeated key
    '{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": [{"id": 1, "image_id": 1, '
    '"category_id": 1, "area": NaN, "iscrowd": 0, "bbox": [0, 0, 1, 1]}]}',  # NaN: Python's parser reads it
    '{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": [{"id": 1, "id": 2, "image_id": 1, '
    '"category_id": 1, "area": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1]}]}',  # a repeated key: the parser keeps the last
    '{"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": [{"id": 1, "image_id": 1, '
    '"category_id": 1, "area": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "segmentation": [[1, 2,]]}]}',  # not JSON
])
def test_ground_truth_files_the_compiled_reader_declines(tmp_path, text):
    assert jsonio.compiled_ground_truth(text.encode()) is None
    _ground_truths_agree(tmp_path, None, "bbox", text=text)


# -- a run's tables read in chunks (one per shard) ---------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 30), max_size=4), st.sampled_from(["bbox", "keypoints", "segm"]))
def test_run_tables_in_chunks_give_the_detections_of_the_whole(seed, cuts, iou_type):
    from mrcnn_batch.evaluate.predictions import (
        detections_from_table,
        detections_from_tables,
    )

    rng = np.random.default_rng(seed)
    n = 30
    lengths = rng.integers(1, 4, n) * 3
    columns = {
        "image_id": pa.array(np.repeat(np.arange(10), 3), pa.int64()), "instance_id": pa.array(np.tile(np.arange(3), 10), pa.int32()),
        "category_id": pa.array(rng.integers(1, 5, n), pa.int32()), "score": pa.array(rng.random(n), pa.float32()),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(4 * n) * 50, pa.float32()), 4),
    }
    if iou_type == "keypoints":
        columns["keypoints"] = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(lengths)], pa.int32()),
                                                        pa.array(rng.random(int(lengths.sum())) * 50, pa.float32()))
    elif iou_type == "segm":
        sizes = pa.FixedSizeListArray.from_arrays(pa.array(np.tile([2, 3], n), pa.int32()), 2)
        counts = pa.array([["6", "15", "0"][i % 3] for i in range(n)], pa.string())  # 6 zeros; 1 one + 5 zeros; empty
        columns["mask"] = pa.StructArray.from_arrays([pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2), pa.int32()),
                                                                               sizes.flatten()), counts], names=["size", "counts"])
        columns["area"] = pa.array([[0.0, 1.0, 0.0][i % 3] for i in range(n)], pa.float64())
    whole = pa.table(columns)
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    chunked = pa.concat_tables([whole.slice(a, b - a) for a, b in zip(bounds, bounds[1:])] or [whole.slice(0, 0)])
    got = detections_from_table(chunked, iou_type=iou_type, source="chunks")
    want = detections_from_table(pa.table({k: pa.concat_arrays([v]) for k, v in columns.items()}), iou_type=iou_type, source="one")
    for name in ("image_id", "category_id", "score", "area", "bbox", "segm_size", "kp_offsets", "kp_values"):
        if getattr(want, name) is not None:
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    if want.segm_counts is not None:
        assert got.segm_counts.to_pylist() == want.segm_counts.to_pylist()
        rows = rng.permutation(n)[:7]
        assert got.take(rows).segm_counts.to_pylist() == want.take(rows).segm_counts.to_pylist()
    # the pieces as shard tables converted one at a time, in any order (then sorted), the
    # arrays' first guess too small where a later piece is larger
    parts = [whole.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    shards = detections_from_tables([parts[i] for i in rng.permutation(len(parts))], count=len(parts),
                                    iou_type=iou_type, source="shards")
    for name in ("image_id", "category_id", "score", "area", "bbox", "segm_size", "kp_offsets", "kp_values"):
        if getattr(want, name) is not None:
            np.testing.assert_array_equal(getattr(shards, name), getattr(want, name), err_msg=name)
            assert getattr(shards, name).dtype == getattr(want, name).dtype, name
    if want.segm_counts is not None:
        assert shards.segm_counts.to_pylist() == want.segm_counts.to_pylist()


def test_shard_tables_of_which_one_lacks_the_area_column_count_every_mask():
    from mrcnn_batch.evaluate.predictions import detections_from_tables

    def shard(ids: list[int], area: float | None) -> pa.Table:
        n = len(ids)
        columns = {"image_id": pa.array(ids, pa.int64()), "instance_id": pa.array(range(n), pa.int32()),
                   "category_id": pa.array([1] * n, pa.int32()), "score": pa.array([0.5] * n, pa.float32()),
                   "bbox": pa.FixedSizeListArray.from_arrays(pa.array([0, 0, 1, 1] * n, pa.float32()), 4),
                   "mask": pa.StructArray.from_arrays(
                       [pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2), pa.int32()), pa.array([2, 3] * n, pa.int32())),
                        pa.array(["15"] * n, pa.string())], names=["size", "counts"])}  # 1 zero, 5 ones: area 5
        if area is not None:
            columns["area"] = pa.array([area] * n)
        return pa.table(columns)

    both = detections_from_tables([shard([1, 2], 5.0), shard([3], 5.0)], count=2, iou_type="segm", source="s")
    one = detections_from_tables([shard([1, 2], 7.0), shard([3], None)], count=2, iou_type="segm", source="s")
    assert both.area.tolist() == one.area.tolist() == [5.0, 5.0, 5.0]  # (7.0 would be read if the column were)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20), st.integers(1, 5), st.integers(1, 11), st.integers(0, 2**32 - 1))
def test_outcomes_packed_two_bits_each_unpack_to_themselves(n, areas, thresholds, seed):
    codes = np.random.default_rng(seed).integers(0, 3, (n, areas, thresholds)).astype(np.uint8)
    packed = match.pack_codes(codes)
    assert packed.shape == (n, -(-areas * thresholds // 4)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(match.unpack_codes(packed, areas, thresholds), codes)


def test_a_runs_float32_keypoints_give_float64_extents_and_areas():
    from mrcnn_batch.evaluate.predictions import detections_from_table, keypoint_extent

    values = np.array([0.1, 0.2, 2, 10.7, 3.3, 2], np.float32)  # x, y, v; x, y, v
    extent = keypoint_extent(np.array([0, 6]), values)
    assert all(e.dtype == np.float64 for e in extent)
    wide = values.astype(np.float64)
    assert extent[2][0] - extent[0][0] == wide[3] - wide[0]  # (in float32 the difference rounds otherwise)
    table = pa.table({"image_id": pa.array([1], pa.int64()), "instance_id": pa.array([0], pa.int32()),
                      "category_id": pa.array([1], pa.int32()), "score": pa.array([0.5], pa.float32()),
                      "bbox": pa.FixedSizeListArray.from_arrays(pa.array([0, 0, 1, 1], pa.float32()), 4),
                      "keypoints": pa.ListArray.from_arrays(pa.array([0, 6], pa.int32()), pa.array(values))})
    dets = detections_from_table(table, iou_type="keypoints", source="t")
    assert dets.kp_values.dtype == np.float32 and dets.area.dtype == np.float64
    assert dets.area[0] == (wide[3] - wide[0]) * (wide[4] - wide[1])
