/* Mask IoU and area on COCO compressed RLE strings, compiled: what pycocotools' maskApi
   computes (rleFrString, rleArea, rleIou), for many masks in one call, from the strings as
   they lie in an Arrow column (one buffer and its offsets), without a Python object per mask.

   The string format: each run length, less the one two before it from the third run on, in
   5-bit groups, low group first, 0x20 marking that another follows, 0x10 of the last the sign,
   each plus 48. The runs alternate, zeros first, in column-major order over the image.

   IoU of a detection and an object: intersection / union pixel counts, as doubles; for a
   crowd object the union is the detection's own area; 0 where they do not meet; -1 where the
   masks' sizes differ and their bounding boxes meet (as rleIou). Where the columns they span do not meet there is nothing to
   count. The GIL is released meanwhile. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "../encode/rle_string.h"

typedef struct {
    uint32_t *runs; /* into the pool */
    int64_t n;
    int64_t h, w;
    int64_t area;
    int64_t x0, x1; /* the columns of the ones, inclusive; x0 > x1 when empty */
} Mask;

/* Decodes s[0:len] into out (at most len runs); the number of runs, or -1 if malformed. */
static int64_t decode(const char *s, int64_t len, uint32_t *out) {
    int64_t m = 0, p = 0;
    while (p < len) {
        int64_t x = 0;
        int k = 0;
        unsigned c;
        do {
            if (p >= len || k > 12) return -1;
            c = (unsigned char)s[p++] - 48u;
            if (c > 63) return -1;
            x |= (int64_t)(c & 0x1f) << (5 * k++);
        } while (c & 0x20);
        if (c & 0x10) x |= (int64_t)-1 << (5 * k); /* negative: the sign extended */
        if (m > 2) x += (int64_t)out[m - 2];
        if (x < 0 || x > UINT32_MAX) return -1;
        out[m++] = (uint32_t)x;
    }
    return m;
}

/* Decodes mask i of (data, offsets) into the pool at *used; its area and box. */
static int load(const char *data, const int64_t *offsets, const int64_t *hw, int64_t i, uint32_t *pool, int64_t *used,
                Mask *mask) {
    int64_t start = offsets[i], len = offsets[i + 1] - offsets[i];
    uint32_t *runs = pool + *used;
    int64_t n = decode(data + start, len, runs);
    if (n < 0) return -1;
    *used += n;
    int64_t h = hw[2 * i], w = hw[2 * i + 1], pos = 0, area = 0, first = -1, last = -1;
    for (int64_t k = 0; k < n; k++) {
        int64_t c = runs[k];
        if ((k & 1) && c > 0) { /* ones at [pos, pos + c) */
            area += c;
            if (first < 0) first = pos;
            last = pos + c - 1;
        }
        pos += c;
    }
    /* the columns the ones span (x0 > x1 when there are none) */
    int64_t x0 = first >= 0 && h > 0 ? first / h : INT64_MAX, x1 = first >= 0 && h > 0 ? last / h : -1;
    *mask = (Mask){runs, n, h, w, area, x0, x1};
    return 0;
}

/* The pixels where both are one and where either is, the runs of both walked together to the
   end of the longer (as rleIou counts them, whatever the strings' totals). */
static void overlap(const Mask *a, const Mask *b, int64_t *inter, int64_t *uni) {
    int64_t ca = a->n ? a->runs[0] : 0, cb = b->n ? b->runs[0] : 0, ia = 1, ib = 1, i = 0, u = 0, left = 1;
    int va = 0, vb = 0;
    while (left > 0) {
        int64_t c = ca < cb ? ca : cb;
        if (va || vb) {
            u += c;
            if (va && vb) i += c;
        }
        ca -= c;
        if (!ca && ia < a->n) {
            ca = a->runs[ia++];
            va = !va;
        }
        cb -= c;
        if (!cb && ib < b->n) {
            cb = b->runs[ib++];
            vb = !vb;
        }
        left = ca + cb;
    }
    *inter = i;
    *uni = u;
}

/* The bounding box [x, y, w, h] of a mask's ones as rleToBbox computes it (whole columns where a
   run of ones crosses one; zeros for an empty mask). */
static void coco_box(const Mask *r, double bb[4]) {
    int64_t m = (r->n / 2) * 2, h = r->h, xs = r->w, ys = r->h, xe = 0, ye = 0, cc = 0, xp = 0;
    bb[0] = bb[1] = bb[2] = bb[3] = 0;
    if (m == 0 || h <= 0) return;
    for (int64_t j = 0; j < m; j++) {
        cc += r->runs[j];
        int64_t t = cc - j % 2, y = t % h, x = (t - y) / h;
        if (j % 2 == 0)
            xp = x;
        else if (xp < x) {
            ys = 0;
            ye = h - 1;
        }
        if (x < xs) xs = x;
        if (x > xe) xe = x;
        if (y < ys) ys = y;
        if (y > ye) ye = y;
    }
    bb[0] = (double)xs;
    bb[2] = (double)(xe - xs + 1);
    bb[1] = (double)ys;
    bb[3] = (double)(ye - ys + 1);
}

/* Whether two such boxes overlap with a positive area (bbIou's test before a mask IoU). */
static int boxes_meet(const Mask *a, const Mask *b) {
    double da[4], db[4];
    coco_box(a, da);
    coco_box(b, db);
    double w = fmin(da[0] + da[2], db[0] + db[2]) - fmax(da[0], db[0]);
    double h = fmin(da[1] + da[3], db[1] + db[3]) - fmax(da[1], db[1]);
    return w > 0 && h > 0;
}

static int64_t total_chars(Py_buffer *offsets, int64_t n) { return n ? ((int64_t *)offsets->buf)[n] - ((int64_t *)offsets->buf)[0] : 0; }

static int valid_offsets(const int64_t *o, int64_t n, int64_t data_len) {
    if (n && (o[0] < 0 || o[n] > data_len)) return 0;
    for (int64_t i = 0; i < n; i++)
        if (o[i + 1] < o[i]) return 0;
    return 1;
}

static PyObject *areas(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, offsets;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offsets)) return NULL;
    PyObject *result = NULL;
    int64_t n = offsets.len / (Py_ssize_t)sizeof(int64_t) - 1;
    if (n < 0 || !valid_offsets(offsets.buf, n, data.len)) {
        PyErr_SetString(PyExc_ValueError, "areas: offsets do not fit the data");
        goto done;
    }
    const int64_t *o = offsets.buf;
    int64_t longest = 0; /* one string's runs at a time */
    for (int64_t i = 0; i < n; i++)
        if (o[i + 1] - o[i] > longest) longest = o[i + 1] - o[i];
    int64_t *out = malloc((n ? n : 1) * sizeof(int64_t));
    uint32_t *runs = malloc((longest + 1) * sizeof(uint32_t));
    int bad = !out || !runs ? -2 : 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t i = 0; i < n && !bad; i++) {
        int64_t m = decode((const char *)data.buf + o[i], o[i + 1] - o[i], runs), area = 0;
        if (m < 0) {
            bad = -1;
            break;
        }
        for (int64_t k = 1; k < m; k += 2) area += runs[k];
        out[i] = area;
    }
    Py_END_ALLOW_THREADS
    if (bad == -2)
        PyErr_NoMemory();
    else if (bad)
        PyErr_SetString(PyExc_ValueError, "areas: a malformed RLE string");
    else
        result = PyBytes_FromStringAndSize((const char *)out, n * sizeof(int64_t));
    free(out);
    free(runs);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    return result;
}

static PyObject *iou(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer dd, do_, dhw, gd, go, ghw, pd, pg, crowd;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*", &dd, &do_, &dhw, &gd, &go, &ghw, &pd, &pg, &crowd)) return NULL;
    PyObject *result = NULL;
    int64_t nd = do_.len / (Py_ssize_t)sizeof(int64_t) - 1, ng = go.len / (Py_ssize_t)sizeof(int64_t) - 1;
    int64_t np_ = pd.len / (Py_ssize_t)sizeof(int64_t);
    if (nd < 0 || ng < 0 || dhw.len != (Py_ssize_t)(2 * nd * sizeof(int64_t)) || ghw.len != (Py_ssize_t)(2 * ng * sizeof(int64_t)) ||
        pg.len != pd.len || crowd.len != ng || !valid_offsets(do_.buf, nd, dd.len) || !valid_offsets(go.buf, ng, gd.len)) {
        PyErr_SetString(PyExc_ValueError, "iou: buffers of the wrong sizes");
        goto done;
    }
    const int64_t *pdv = pd.buf, *pgv = pg.buf;
    for (int64_t k = 0; k < np_; k++)
        if (pdv[k] < 0 || pdv[k] >= nd || pgv[k] < 0 || pgv[k] >= ng) {
            PyErr_SetString(PyExc_ValueError, "iou: a pair out of range");
            goto done;
        }
    Mask *dm = malloc((nd ? nd : 1) * sizeof(Mask)), *gm = malloc((ng ? ng : 1) * sizeof(Mask));
    uint32_t *pool = malloc((total_chars(&do_, nd) + total_chars(&go, ng) + 1) * sizeof(uint32_t));
    double *out = malloc((np_ ? np_ : 1) * sizeof(double));
    int bad = !dm || !gm || !pool || !out ? -2 : 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t used = 0;
    for (int64_t i = 0; i < nd && !bad; i++) bad = load(dd.buf, do_.buf, dhw.buf, i, pool, &used, &dm[i]);
    for (int64_t i = 0; i < ng && !bad; i++) bad = load(gd.buf, go.buf, ghw.buf, i, pool, &used, &gm[i]);
    const uint8_t *cr = crowd.buf;
    for (int64_t k = 0; k < np_ && !bad; k++) {
        const Mask *a = &dm[pdv[k]], *b = &gm[pgv[k]];
        if (a->h != b->h || a->w != b->w) { /* rleIou: -1 once the boxes are seen to meet */
            out[k] = boxes_meet(a, b) ? -1.0 : 0.0;
            continue;
        }
        if (a->x0 > b->x1 || b->x0 > a->x1) { /* (also: either empty) */
            out[k] = 0.0;
            continue;
        }
        int64_t inter, uni;
        overlap(a, b, &inter, &uni);
        if (cr[pgv[k]]) uni = a->area;
        out[k] = inter == 0 ? 0.0 : (double)inter / (double)uni;
    }
    Py_END_ALLOW_THREADS
    if (bad == -2)
        PyErr_NoMemory();
    else if (bad)
        PyErr_SetString(PyExc_ValueError, "iou: a malformed RLE string");
    else
        result = PyBytes_FromStringAndSize((const char *)out, np_ * sizeof(double));
    free(dm);
    free(gm);
    free(pool);
    free(out);
done:
    PyBuffer_Release(&dd);
    PyBuffer_Release(&do_);
    PyBuffer_Release(&dhw);
    PyBuffer_Release(&gd);
    PyBuffer_Release(&go);
    PyBuffer_Release(&ghw);
    PyBuffer_Release(&pd);
    PyBuffer_Release(&pg);
    PyBuffer_Release(&crowd);
    return result;
}

/* -- polygons ------------------------------------------------------------------------------------ */

static int compare_uint32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

/* The runs of a polygon of k points (x, y, x, y, ...) rasterised as pycocotools' rleFrPoly does
   it: the vertices scaled by 5 and rounded, every edge walked point by point on that grid, the
   points where the walk changes column taken back to pixel columns, each giving the first row
   inside the polygon in its column; the sorted positions, less the one before, are the runs
   (a zero run merges its neighbours). The same integer and double operations in the same
   order, so the same pixels. Returns the number of runs in *runs (malloc'ed), or -1. */
static int64_t polygon_runs(const double *xy, int64_t k, int64_t h, int64_t w, uint32_t **runs) {
    const double scale = 5;
    int *px = malloc(sizeof(int) * (k + 1)), *py = malloc(sizeof(int) * (k + 1));
    if (!px || !py) {
        free(px);
        free(py);
        return -1;
    }
    for (int64_t j = 0; j < k; j++) {
        px[j] = (int)(scale * xy[2 * j] + .5);
        py[j] = (int)(scale * xy[2 * j + 1] + .5);
    }
    px[k] = px[0];
    py[k] = py[0];
    int64_t n = 0;
    for (int64_t j = 0; j < k; j++) {
        int64_t ax = labs((long)px[j] - px[j + 1]), ay = labs((long)py[j] - py[j + 1]);
        n += (ax > ay ? ax : ay) + 1;
    }
    int *u = malloc(sizeof(int) * (n ? n : 1)), *v = malloc(sizeof(int) * (n ? n : 1));
    int64_t *bx = malloc(sizeof(int64_t) * (n ? n : 1)), *by = malloc(sizeof(int64_t) * (n ? n : 1));
    uint32_t *a = malloc(sizeof(uint32_t) * (n + 1)), *b = malloc(sizeof(uint32_t) * (n + 1));
    int64_t out = -1;
    if (!u || !v || !bx || !by || !a || !b) goto done;
    n = 0;
    for (int64_t j = 0; j < k; j++) { /* the edge's points, walked along its longer side */
        int xs = px[j], xe = px[j + 1], ys = py[j], ye = py[j + 1];
        int dx = abs(xe - xs), dy = abs(ys - ye);
        int flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) {
            int t = xs;
            xs = xe;
            xe = t;
            t = ys;
            ys = ye;
            ye = t;
        }
        double slope = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        if (dx >= dy) {
            for (int d = 0; d <= dx; d++) {
                int t = flip ? dx - d : d;
                u[n] = t + xs;
                v[n] = (int)(ys + slope * t + .5);
                n++;
            }
        } else {
            for (int d = 0; d <= dy; d++) {
                int t = flip ? dy - d : d;
                v[n] = t + ys;
                u[n] = (int)(xs + slope * t + .5);
                n++;
            }
        }
    }
    int64_t m = 0; /* where the walk changes column: that column's first row inside */
    for (int64_t j = 1; j < n; j++) {
        if (u[j] == u[j - 1]) continue;
        int ux = u[j] < u[j - 1] ? u[j] : u[j] - 1;
        /* (ux + .5) / 5 - .5 is a whole number exactly when ux = 2 (mod 5), for any int ux: a
           test that spares the division and floor() of the other four points in five */
        if (((ux % 5) + 5) % 5 != 2) continue;
        double xd = (double)ux;
        xd = (xd + .5) / scale - .5;
        if (floor(xd) != xd || xd < 0 || xd > w - 1) continue;
        double yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]);
        yd = (yd + .5) / scale - .5;
        if (yd < 0)
            yd = 0;
        else if (yd > h)
            yd = h;
        yd = ceil(yd);
        bx[m] = (int)xd;
        by[m] = (int)yd;
        m++;
    }
    for (int64_t j = 0; j < m; j++) a[j] = (uint32_t)(bx[j] * (int)h + by[j]);
    a[m] = (uint32_t)(h * w);
    int64_t count = m + 1;
    qsort(a, count, sizeof(uint32_t), compare_uint32);
    uint32_t before = 0;
    for (int64_t j = 0; j < count; j++) {
        uint32_t t = a[j];
        a[j] -= before;
        before = t;
    }
    int64_t j = 0, r = 0;
    b[r++] = a[j++];
    while (j < count) {
        if (a[j] > 0) {
            b[r++] = a[j++];
        } else { /* two changes at one position cancel: the runs around them join */
            j++;
            if (j < count) b[r - 1] += a[j++];
        }
    }
    *runs = b;
    b = NULL;
    out = r;
done:
    free(px);
    free(py);
    free(u);
    free(v);
    free(bx);
    free(by);
    free(a);
    free(b);
    return out;
}

static PyObject *polygons(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer xy, starts, hw;
    if (!PyArg_ParseTuple(args, "y*y*y*", &xy, &starts, &hw)) return NULL;
    PyObject *result = NULL;
    int64_t n = starts.len / (Py_ssize_t)sizeof(int64_t) - 1, n_xy = xy.len / (Py_ssize_t)sizeof(double);
    const int64_t *st = starts.buf, *size = hw.buf;
    int bad = n < 0 || hw.len != (Py_ssize_t)(2 * (n > 0 ? n : 0) * sizeof(int64_t)) || (n >= 0 && (st[0] < 0 || st[n] > n_xy));
    for (int64_t i = 0; i < n && !bad; i++) bad = st[i + 1] < st[i] || (st[i + 1] - st[i]) % 2 || size[2 * i] < 0 || size[2 * i + 1] < 0 ||
                                                    size[2 * i] * size[2 * i + 1] >= ((int64_t)1 << 32);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "polygons: buffers of the wrong sizes");
        goto done;
    }
    char *text = NULL;
    size_t used = 0, cap = 0;
    int64_t *ends = malloc((n + 1) * sizeof(int64_t));
    uint8_t *done = malloc(n ? n : 1);
    int fail = !ends || !done;
    Py_BEGIN_ALLOW_THREADS
    if (!fail) ends[0] = 0;
    for (int64_t i = 0; i < n && !fail; i++) {
        const double *c = (const double *)xy.buf + st[i];
        int plain = 1; /* finite and well inside int32 once scaled by 5 (else: not done here) */
        for (int64_t q = 0; q < st[i + 1] - st[i] && plain; q++) plain = c[q] > -1e8 && c[q] < 1e8;
        done[i] = (uint8_t)plain;
        if (!plain) {
            ends[i + 1] = (int64_t)used;
            continue;
        }
        uint32_t *runs = NULL;
        int64_t r = polygon_runs((const double *)xy.buf + st[i], (st[i + 1] - st[i]) / 2, size[2 * i], size[2 * i + 1], &runs);
        if (r < 0) {
            fail = 1;
            break;
        }
        if (used + 7 * r > cap) {
            size_t want = used + 7 * r > 2 * cap ? used + 7 * r : 2 * cap;
            char *grown = realloc(text, want ? want : 1);
            if (!grown) {
                free(runs);
                fail = 1;
                break;
            }
            text = grown;
            cap = want;
        }
        used += rle_string(runs, r, text + used);
        ends[i + 1] = (int64_t)used;
        free(runs);
    }
    Py_END_ALLOW_THREADS
    if (fail)
        PyErr_NoMemory();
    else
        result = Py_BuildValue("(y#y#y#)", text ? text : "", (Py_ssize_t)used, (const char *)ends,
                               (Py_ssize_t)((n + 1) * sizeof(int64_t)), (const char *)done, (Py_ssize_t)n);
    free(text);
    free(ends);
    free(done);
done:
    PyBuffer_Release(&xy);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&hw);
    return result;
}

static PyMethodDef methods[] = {
    {"polygons", polygons, METH_VARARGS,
     "polygons(xy, starts, hw) -> (data, offsets, done): the compressed RLE string of each polygon xy[starts[i]:starts[i + 1]] "
     "(float64 x, y pairs) in an image of hw[i] = [h, w] (int64), as pycocotools' frPyObjects gives it; data, the "
     "int64 offsets (n + 1) and a uint8 per polygon (0: a coordinate not finite or 1e8 or more from 0, left out) as bytes."},
    {"areas", areas, METH_VARARGS, "areas(data, offsets) -> bytes of int64: the pixel count of each RLE string data[offsets[i]:offsets[i + 1]]."},
    {"iou", iou, METH_VARARGS,
     "iou(d_data, d_offsets, d_hw, g_data, g_offsets, g_hw, pd, pg, crowd) -> bytes of float64: the IoU of each pair "
     "(pd[k], pg[k]) of detection and object masks (strings by int64 offsets, [h, w] int64 rows, crowd uint8 per object)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rle", "Compiled RLE mask IoU and area (see similarity.py).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rle(void) { return PyModule_Create(&module); }
