/* Paste + threshold + COCO RLE of all masks of an image, in one pass over their box columns.

   The compiled kernel of mrcnn_batch/encode/masks.py (whose docstring states the arithmetic):
   torchvision's paste_masks_in_image(...) > threshold as torch computes it on the CPU, encoded
   as pycocotools' compressed RLE string. Python pads the masks and expands and rounds the boxes
   (torchvision's own expand_masks / expand_boxes); this file interpolates and encodes.

   The box rows of one source cell (i, i + 1) share their source rows, the box columns of one
   cell (j, j + 1) their source columns. Where all four corners of a source cell clear the
   threshold by a margin far above the rounding of the interpolation, every pixel of the cell
   takes their side; the other cells (those a change can lie in) are computed pixel by pixel
   exactly as torch does (float32, fused multiply-adds: fmaf). Built with -ffp-contract=off, so
   that the compiler fuses nothing else; on x86-64 a clone for CPUs with FMA instructions is
   chosen at load time. The GIL is released meanwhile. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rle_string.h"

#define SMALL_BOX_SIDES 128 /* torch takes the four-product route when h + w <= this */

typedef struct {
    uint32_t *runs;
    size_t n, cap;
    int64_t last; /* linear position where the current run started */
    int cur;      /* the current run's value */
} Runs;

static int runs_push(Runs *r, int64_t length) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        uint32_t *p = realloc(r->runs, cap * sizeof(uint32_t));
        if (!p) return -1;
        r->runs = p;
        r->cap = cap;
    }
    r->runs[r->n++] = (uint32_t)length;
    return 0;
}

/* The mask's value from linear position pos on is val (positions only increase). */
static inline int emit(Runs *r, int64_t pos, int val) {
    if (val == r->cur) return 0;
    if (runs_push(r, pos - r->last)) return -1;
    r->last = pos;
    r->cur = val;
    return 0;
}

/* torch's bilinear source index for output index o of a side of n pixels (upsample_bilinear2d,
   align_corners=False), as masks.py's _source_index: cells i0, i1 and weights w0, w1. */
static inline void source_index(int64_t o, int64_t n, int size, int *i0, int *i1, float *w0, float *w1) {
    if (n == size) { /* scale 1: a plain copy */
        *i0 = *i1 = (int)o;
        *w0 = 1.0f;
        *w1 = 0.0f;
        return;
    }
    float ratio = (float)size / (float)n;
    float src = (float)((double)ratio * (double)((float)o + 0.5f) - 0.5);
    if (src < 0.0f) src = 0.0f;
    int i = (int)floorf(src);
    if (i > size - 1) i = size - 1;
    float l1 = src - (float)i;
    if (l1 < 0.0f) l1 = 0.0f;
    if (l1 > 1.0f) l1 = 1.0f;
    *i0 = i;
    *i1 = i + (i < size - 1);
    *w1 = l1;
    *w0 = 1.0f - l1;
}

typedef struct {
    int i0, i1;
    float a0, a1;
} Row;

typedef struct {
    int64_t start, end; /* box rows (image rows) [start, end) */
    int i0, i1;         /* their source rows */
} Group;

/* Which value every pixel of the source cell (i0, i1) x (j0, j1) takes, if one: 1 (all on),
   -1 (all off), 0 (to be computed). Each pixel's value is a combination of the four corners with
   weights summing to one, up to a few float32 roundings of its terms, far less than the margin
   (NaN or an infinity makes the margin NaN or infinite: never clear). */
static inline int cell_value(const float *g, int size, int i0, int i1, int j0, int j1, float thr) {
    float p00 = g[i0 * size + j0], p01 = g[i0 * size + j1], p10 = g[i1 * size + j0], p11 = g[i1 * size + j1];
    float margin = (fabsf(p00) + fabsf(p01) + fabsf(p10) + fabsf(p11)) * 0x1p-18f;
    float lo = p00 < p01 ? p00 : p01, hi = p00 < p01 ? p01 : p00;
    lo = p10 < lo ? p10 : lo;
    hi = p10 > hi ? p10 : hi;
    lo = p11 < lo ? p11 : lo;
    hi = p11 > hi ? p11 : hi;
    if (lo - margin > thr) return 1;
    if (hi + margin < thr) return -1;
    return 0;
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define FMA_CLONES
#endif

/* Pastes and encodes one mask (g: S x S); its runs are left in r. rows, groups, flags and
   events: room for the box's rows inside the image. */
FMA_CLONES static int encode_one(const float *g, int size, const int64_t *box, int64_t height, int64_t width,
                      float thr, Row *rows, Group *groups, signed char *flags, int *events, Runs *r) {
    int64_t x0 = box[0], y0 = box[1], x1 = box[2], y1 = box[3];
    int64_t bw = x1 - x0 + 1 > 1 ? x1 - x0 + 1 : 1, bh = y1 - y0 + 1 > 1 ? y1 - y0 + 1 : 1;
    int64_t xa = x0 > 0 ? x0 : 0, xb = x1 + 1 < width ? x1 + 1 : width;
    int64_t ya = y0 > 0 ? y0 : 0, yb = y1 + 1 < height ? y1 + 1 : height;
    int64_t total = height * width;
    r->n = 0;
    r->last = 0;
    r->cur = 0;
    if (xa < xb && ya < yb) {
        int four = bh + bw <= SMALL_BOX_SIDES;
        /* the box rows, grouped by source cell (the same for every column) */
        int n_groups = 0;
        for (int64_t y = ya; y < yb; y++) {
            Row *row = &rows[y - ya];
            source_index(y - y0, bh, size, &row->i0, &row->i1, &row->a0, &row->a1);
            if (n_groups && groups[n_groups - 1].i0 == row->i0 && groups[n_groups - 1].i1 == row->i1) {
                groups[n_groups - 1].end = y + 1;
            } else {
                groups[n_groups++] = (Group){y, y + 1, row->i0, row->i1};
            }
        }
        int j0 = -1, j1 = -1, n_events = 0;
        for (int64_t x = xa; x < xb; x++) {
            int c0, c1;
            float b0, b1;
            source_index(x - x0, bw, size, &c0, &c1, &b0, &b1);
            if (c0 != j0 || c1 != j1) { /* a new pair of source columns: their cells' values */
                j0 = c0;
                j1 = c1;
                /* the cells where the column's value may change: those to be computed and
                   the first of each run of cells of one side */
                n_events = 0;
                for (int k = 0; k < n_groups; k++) {
                    flags[k] = (signed char)cell_value(g, size, groups[k].i0, groups[k].i1, j0, j1, thr);
                    if (k == 0 || !flags[k] || flags[k] != flags[k - 1]) events[n_events++] = k;
                }
            }
            int64_t col = x * height;
            if (ya > 0 && emit(r, col, 0)) return -1;
            for (int e = 0; e < n_events; e++) {
                int k = events[e];
                const Group *grp = &groups[k];
                if (flags[k]) {
                    if (emit(r, col + grp->start, flags[k] > 0)) return -1;
                    continue;
                }
                int i0 = grp->i0, i1 = grp->i1;
                float p00 = g[i0 * size + j0], p01 = g[i0 * size + j1], p10 = g[i1 * size + j0], p11 = g[i1 * size + j1];
                /* rows first: the column's value at both source rows (exactly torch's
                   intermediates for boxes that are not small); every row of the cell lies
                   between them, up to a few roundings of the corners' terms: far below this
                   margin, whatever their signs */
                float t0 = fmaf(p00, b0, p01 * b1), t1 = fmaf(p10, b0, p11 * b1);
                float margin = (fabsf(p00) + fabsf(p01) + fabsf(p10) + fabsf(p11)) * 0x1p-18f;
                float lo = t0 < t1 ? t0 : t1, hi = t0 < t1 ? t1 : t0;
                if (lo - margin > thr || hi + margin < thr) {
                    if (emit(r, col + grp->start, lo - margin > thr)) return -1;
                    continue;
                }
                /* rows [first, last) computed; in a tall cell only those next to the crossing
                   of the line from t0 to t1, where the rows beyond are shown clear */
                int64_t first = grp->start, last = grp->end;
                int before = 0, after = 0;
                if (last - first > 4) {
                    const Row *cell = rows + (first - ya);
                    float d = t1 - t0, at = (thr - t0) / d; /* the weight a1 where the line crosses */
                    int64_t n = last - first, k = 0;
                    while (k < n && cell[k].a1 < at) k++;
                    int64_t lo = k > 1 ? k - 1 : 0, hi = k + 1 < n ? k + 1 : n;
                    if (lo > 0) { /* rows below lo: between t0 and the line at row lo - 1 */
                        float f = fmaf(d, cell[lo - 1].a1, t0);
                        if (f - margin > thr && t0 - margin > thr) before = 1;
                        else if (f + margin < thr && t0 + margin < thr) before = -1;
                        if (before) first += lo;
                    }
                    if (hi < n) { /* rows from hi on: between the line at row hi and t1 */
                        float f = fmaf(d, cell[hi].a1, t0);
                        if (f - margin > thr && t1 - margin > thr) after = 1;
                        else if (f + margin < thr && t1 + margin < thr) after = -1;
                        if (after) last = grp->start + hi;
                    }
                }
                if (before && emit(r, col + grp->start, before > 0)) return -1;
                for (int64_t y = first; y < last; y++) {
                    float a0 = rows[y - ya].a0, a1 = rows[y - ya].a1, v;
                    if (four)
                        v = fmaf(p11, a1 * b1, fmaf(p10, a1 * b0, fmaf(p00, a0 * b0, p01 * (a0 * b1))));
                    else
                        v = fmaf(t0, a0, t1 * a1);
                    if (emit(r, col + y, v > thr)) return -1;
                }
                if (after && emit(r, col + last, after > 0)) return -1;
            }
            if (yb < height && emit(r, col + yb, 0)) return -1;
        }
        if (emit(r, xb * height, 0)) return -1; /* the box's last column may end on a one */
    }
    if (total > r->last && runs_push(r, total - r->last)) return -1;
    return 0;
}

typedef struct {
    char *text;
    size_t used, cap;
    size_t *ends; /* each mask's string ends here in text */
    int64_t *areas;
} Encoded;

static int encode_all(const float *grid, int n, int size, const int64_t *boxes, int64_t height,
                      int64_t width, float thr, Encoded *out) {
    int64_t most_rows = 1;
    for (int m = 0; m < n; m++) {
        int64_t y0 = boxes[4 * m + 1], y1 = boxes[4 * m + 3];
        int64_t ya = y0 > 0 ? y0 : 0, yb = y1 + 1 < height ? y1 + 1 : height;
        if (yb - ya > most_rows) most_rows = yb - ya;
    }
    Row *rows = malloc((size_t)most_rows * sizeof(Row));
    Group *groups = malloc((size_t)most_rows * sizeof(Group));
    signed char *flags = malloc((size_t)most_rows);
    int *events = malloc((size_t)most_rows * sizeof(int));
    Runs r = {0};
    int status = rows && groups && flags && events ? 0 : -1;
    for (int m = 0; m < n && !status; m++) {
        status = encode_one(grid + (size_t)m * size * size, size, boxes + 4 * m, height, width, thr, rows, groups, flags, events, &r);
        if (status) break;
        int64_t area = 0;
        for (size_t i = 1; i < r.n; i += 2) area += r.runs[i];
        out->areas[m] = area;
        size_t need = out->used + 7 * r.n; /* at most 7 characters per count (35 bits) */
        if (need > out->cap) {
            size_t cap = need > 2 * out->cap ? need : 2 * out->cap;
            char *p = realloc(out->text, cap);
            if (!p) {
                status = -1;
                break;
            }
            out->text = p;
            out->cap = cap;
        }
        out->used += rle_string(r.runs, r.n, out->text + out->used);
        out->ends[m] = out->used;
    }
    free(rows);
    free(groups);
    free(flags);
    free(events);
    free(r.runs);
    return status;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    Py_buffer grid, boxes;
    int n, size;
    long long height, width;
    float thr;
    if (!PyArg_ParseTuple(args, "y*iiy*LLf", &grid, &n, &size, &boxes, &height, &width, &thr)) return NULL;
    PyObject *result = NULL;
    Encoded out = {0};
    if (n < 0 || size < 1 || height < 1 || width < 1 || (size_t)grid.len != (size_t)n * size * size * sizeof(float) ||
        (size_t)boxes.len != (size_t)n * 4 * sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "encode: buffers do not match n masks of size x size and n boxes");
        goto done;
    }
    out.ends = malloc((n ? n : 1) * sizeof(size_t));
    out.areas = malloc((n ? n : 1) * sizeof(int64_t));
    if (!out.ends || !out.areas) {
        PyErr_NoMemory();
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = encode_all(grid.buf, n, size, boxes.buf, height, width, thr, &out);
    Py_END_ALLOW_THREADS
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *strings = PyList_New(n);
    if (!strings) goto done;
    size_t start = 0;
    for (int m = 0; m < n; m++) {
        PyObject *s = PyUnicode_FromStringAndSize(out.text + start, out.ends[m] - start);
        if (!s) {
            Py_DECREF(strings);
            goto done;
        }
        PyList_SET_ITEM(strings, m, s);
        start = out.ends[m];
    }
    PyObject *areas = PyBytes_FromStringAndSize((const char *)out.areas, n * sizeof(int64_t));
    if (!areas) {
        Py_DECREF(strings);
        goto done;
    }
    result = Py_BuildValue("(NN)", strings, areas);
done:
    free(out.text);
    free(out.ends);
    free(out.areas);
    PyBuffer_Release(&grid);
    PyBuffer_Release(&boxes);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(grid, n, size, boxes, height, width, threshold) -> (list of RLE strings, bytes of int64 areas)\n\n"
     "grid: n x size x size float32 padded masks (C order); boxes: n x 4 int64 expanded, rounded boxes."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_paste", "Compiled paste + RLE (see masks.py).", -1, methods};

PyMODINIT_FUNC PyInit__paste(void) { return PyModule_Create(&module); }
