/* The greedy matching of COCOeval.evaluateImg, compiled: the kernel of
   mrcnn_batch/evaluate/match.py's _greedy_match (whose docstring and pycocotools' say what it
   computes).

   For each (image, category) group, area range and IoU threshold, the detections in rank
   order each take the object of highest IoU (the later one of equal IoUs) that reaches the
   threshold and is free (a crowd always is), among the objects not ignored in that area range
   if any qualifies, else among the ignored ones. The GIL is released meanwhile. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const double *iou;      /* each group's nd x ng IoUs (-1: not a candidate), group after group */
    const int64_t *iou_at;  /* P + 1: each group's start in iou */
    const int64_t *d_at;    /* P + 1: each group's first detection (a row of out) */
    const int64_t *g_at;    /* P + 1: each group's first object (an index of crowd, ig) */
    const uint8_t *crowd;   /* per object */
    const uint8_t *ig;      /* objects x A: ignored in that area range */
    const double *thr;      /* T */
    int32_t *out;           /* detections x A x T: the object taken (local to its group) or -1 */
    int64_t p, a, t;
} Job;

/* The last object of highest IoU >= floor among the free ones that are (ignored = 0) or are
   not (ignored = 1) ignored; -1 if none. */
static inline int64_t best(const double *row, int64_t ng, const uint8_t *crowd, const uint8_t *ig, int64_t area_ranges,
                           int64_t a, const uint8_t *taken, double floor, int ignored) {
    int64_t m = -1;
    double top = floor;
    for (int64_t g = 0; g < ng; g++) {
        if (ig[g * area_ranges + a] != ignored || (taken[g] && !crowd[g]) || row[g] < top) continue;
        top = row[g];
        m = g;
    }
    return m;
}

static int run(const Job *j) {
    int64_t most = 1;
    for (int64_t p = 0; p < j->p; p++)
        if (j->g_at[p + 1] - j->g_at[p] > most) most = j->g_at[p + 1] - j->g_at[p];
    uint8_t *taken = malloc((size_t)most);
    if (!taken) return -1;
    for (int64_t p = 0; p < j->p; p++) {
        int64_t nd = j->d_at[p + 1] - j->d_at[p], ng = j->g_at[p + 1] - j->g_at[p];
        const double *iou = j->iou + j->iou_at[p];
        const uint8_t *crowd = j->crowd + j->g_at[p], *ig = j->ig + j->g_at[p] * j->a;
        for (int64_t a = 0; a < j->a; a++) {
            for (int64_t t = 0; t < j->t; t++) {
                memset(taken, 0, (size_t)ng);
                for (int64_t s = 0; s < nd; s++) {
                    const double *row = iou + s * ng;
                    int64_t m = best(row, ng, crowd, ig, j->a, a, taken, j->thr[t], 0);
                    if (m < 0) m = best(row, ng, crowd, ig, j->a, a, taken, j->thr[t], 1);
                    j->out[((j->d_at[p] + s) * j->a + a) * j->t + t] = (int32_t)m;
                    if (m >= 0) taken[m] = 1;
                }
            }
        }
    }
    free(taken);
    return 0;
}

static PyObject *greedy(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer iou, iou_at, d_at, g_at, crowd, ig, thr, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*", &iou, &iou_at, &d_at, &g_at, &crowd, &ig, &thr, &out)) return NULL;
    PyObject *result = NULL;
    int64_t p = iou_at.len / (Py_ssize_t)sizeof(int64_t) - 1, t = thr.len / (Py_ssize_t)sizeof(double);
    const int64_t *ia = iou_at.buf, *da = d_at.buf, *ga = g_at.buf;
    int64_t n_obj = crowd.len, a = n_obj ? ig.len / n_obj : 0;
    int bad = p < 0 || d_at.len != iou_at.len || g_at.len != iou_at.len || (n_obj && ig.len != n_obj * a) || t < 1 || a < 1;
    if (!bad && p >= 0) bad = ia[0] != 0 || da[0] != 0 || ga[0] != 0 || ia[p] != iou.len / (Py_ssize_t)sizeof(double) ||
                              ga[p] != n_obj || out.len != (Py_ssize_t)(da[p] * a * t * sizeof(int32_t));
    for (int64_t q = 0; q < p && !bad; q++)
        bad = da[q + 1] < da[q] || ga[q + 1] < ga[q] || ia[q + 1] - ia[q] != (da[q + 1] - da[q]) * (ga[q + 1] - ga[q]);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "greedy: buffers of the wrong sizes");
        goto done;
    }
    Job job = {iou.buf, ia, da, ga, crowd.buf, ig.buf, thr.buf, out.buf, p, a, t};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&job);
    Py_END_ALLOW_THREADS
    if (status)
        PyErr_NoMemory();
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&iou);
    PyBuffer_Release(&iou_at);
    PyBuffer_Release(&d_at);
    PyBuffer_Release(&g_at);
    PyBuffer_Release(&crowd);
    PyBuffer_Release(&ig);
    PyBuffer_Release(&thr);
    PyBuffer_Release(&out);
    return result;
}

/* -- pycocotools' detection order ------------------------------------------------------------- */

/* An integer column as the caller holds it: int32 or int64 (no widened copy). */
typedef struct {
    const void *p; /* NULL: none */
    int wide;
} Ints;

static inline int64_t value(const Ints *c, int64_t i) { return c->wide ? ((const int64_t *)c->p)[i] : ((const int32_t *)c->p)[i]; }

/* The column of n values in buf (4 or 8 bytes each; an empty buffer: none); -1 if neither. */
static int ints(const Py_buffer *buf, int64_t n, int optional, Ints *out) {
    out->p = buf->len ? buf->buf : NULL;
    out->wide = buf->len == (Py_ssize_t)(n * 8);
    if (!buf->len) return optional || n == 0 ? 0 : -1;
    return buf->len == (Py_ssize_t)(n * 8) || buf->len == (Py_ssize_t)(n * 4) ? 0 : -1;
}

typedef struct {
    const double *score;
    Ints tie1, tie2;
} Keys;

/* a before b: the higher score, then the lower tie1, tie2, then the earlier (stable) */
static inline int before(const Keys *k, int64_t a, int64_t b) {
    if (k->score[a] != k->score[b]) return k->score[a] > k->score[b];
    if (k->tie1.p && value(&k->tie1, a) != value(&k->tie1, b)) return value(&k->tie1, a) < value(&k->tie1, b);
    if (k->tie2.p && value(&k->tie2, a) != value(&k->tie2, b)) return value(&k->tie2, a) < value(&k->tie2, b);
    return a < b;
}

static void sort_range(const Keys *k, int64_t *v, int64_t n, int64_t *tmp) {
    if (n <= 24) { /* insertion sort */
        for (int64_t i = 1; i < n; i++) {
            int64_t x = v[i], j = i;
            while (j > 0 && before(k, x, v[j - 1])) {
                v[j] = v[j - 1];
                j--;
            }
            v[j] = x;
        }
        return;
    }
    int64_t h = n / 2;
    sort_range(k, v, h, tmp);
    sort_range(k, v + h, n - h, tmp);
    int64_t i = 0, j = h, o = 0;
    while (i < h && j < n) tmp[o++] = before(k, v[j], v[i]) ? v[j++] : v[i++];
    while (i < h) tmp[o++] = v[i++];
    while (j < n) tmp[o++] = v[j++];
    memcpy(v, tmp, (size_t)n * sizeof(int64_t));
}

static PyObject *group_order(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer key, score, tie1, tie2, out;
    long long groups;
    if (!PyArg_ParseTuple(args, "y*y*y*y*Lw*", &key, &score, &tie1, &tie2, &groups, &out)) return NULL;
    PyObject *result = NULL;
    int64_t n = score.len / (Py_ssize_t)sizeof(double);
    Ints kv;
    Keys k = {score.buf, {NULL, 0}, {NULL, 0}};
    int bad = groups < 0 || score.len % (Py_ssize_t)sizeof(double) || ints(&key, n, 0, &kv) || ints(&tie1, n, 1, &k.tie1) ||
              ints(&tie2, n, 1, &k.tie2) || out.len != (Py_ssize_t)(n * sizeof(int64_t));
    for (int64_t i = 0; i < n && !bad; i++) bad = value(&kv, i) < 0 || value(&kv, i) >= groups;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "group_order: keys out of range or buffers of the wrong sizes");
        goto done;
    }
    int64_t *start = calloc((size_t)groups + 1, sizeof(int64_t)), *order = out.buf, *tmp = malloc((n ? n : 1) * sizeof(int64_t));
    if (!start || !tmp) {
        PyErr_NoMemory();
    } else {
        Py_BEGIN_ALLOW_THREADS
        for (int64_t i = 0; i < n; i++) start[value(&kv, i) + 1]++; /* counting sort by key: stable */
        for (int64_t g = 0; g < groups; g++) start[g + 1] += start[g];
        for (int64_t i = 0; i < n; i++) order[start[value(&kv, i)]++] = i;
        int64_t a = 0;
        for (int64_t g = 0; g < groups; g++) { /* start[g] is now the end of group g */
            sort_range(&k, order + a, start[g] - a, tmp);
            a = start[g];
        }
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    free(start);
    free(tmp);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&score);
    PyBuffer_Release(&tie1);
    PyBuffer_Release(&tie2);
    return result;
}

static PyMethodDef methods[] = {
    {"group_order", group_order, METH_VARARGS,
     "group_order(key, score, tie1, tie2, groups, out): fills out (int64, as many as scores) with the positions sorted "
     "by key (in [0, groups)), then score (float64) descending, then tie1 and tie2 ascending (an empty buffer: none), "
     "then position (stable): what np.lexsort((tie2, tie1, -score, key)) gives. Keys and ties are int32 or int64, "
     "each as its buffer's size says."},
    {"greedy", greedy, METH_VARARGS,
     "greedy(iou, iou_at, d_at, g_at, crowd, ig, thr, out): fills out (detections x A x T int32) with the object each "
     "detection takes in each area range and threshold (-1: none); iou float64 per group nd x ng, iou_at / d_at / g_at "
     "int64 (P + 1), crowd uint8 per object, ig uint8 objects x A, thr float64 (T)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_match", "Compiled greedy matching (see match.py).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__match(void) { return PyModule_Create(&module); }
