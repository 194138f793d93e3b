/* Accumulation's inner loop, compiled: the kernel of mrcnn_batch/evaluate/accumulate.py (whose
   docstring states what pycocotools computes and why true positives suffice).

   For one maxDet: the detections in pycocotools' order (category, then its stable score order),
   each with its outcome code in every (area range, IoU threshold) row. Per category and row:
   the running true and false positive counts, the precision at each true positive
   tp / (fp + tp + eps) in double precision (the same operations in the same order as numpy's,
   built with -ffp-contract=off), its maximum from there to the category's end, and, for each
   recall threshold, that maximum and the score at the need-th true positive. The GIL is
   released meanwhile. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

#define CODE_TP 1
#define CODE_FP 2

typedef struct {
    const uint8_t *codes;  /* N x ceil(AT / 4): a detection's codes together, 2 bits each (row a: byte a / 4, bits 2 (a % 4)) */
    const int64_t *order;  /* the detections kept, in pycocotools' order */
    const int64_t *first;  /* K + 1: each category's start in order */
    const double *score;   /* per detection (row of codes), read through order */
    const int64_t *need;   /* AT x K x R: the true positives a recall threshold needs */
    double *q, *ss;        /* AT x K x R: precision and score at each recall threshold */
    int64_t *n_tp;         /* AT x K */
    int64_t at, k, r;
} Job;

static int run(Job *j) {
    int64_t most = 0;
    for (int64_t c = 0; c < j->k; c++)
        if (j->first[c + 1] - j->first[c] > most) most = j->first[c + 1] - j->first[c];
    int64_t rows = j->at, width = (rows + 3) / 4, cap = most ? most : 1;
    double *pr = malloc((size_t)(rows * cap) * sizeof(double));   /* row x true positive */
    int64_t *pos = malloc((size_t)(rows * cap) * sizeof(int64_t)); /* their positions */
    int64_t *tp = malloc((size_t)rows * sizeof(int64_t)), *fp = malloc((size_t)rows * sizeof(int64_t));
    if (!pr || !pos || !tp || !fp) {
        free(pr);
        free(pos);
        free(tp);
        free(fp);
        return -1;
    }
    for (int64_t c = 0; c < j->k; c++) {
        int64_t start = j->first[c], end = j->first[c + 1];
        for (int64_t a = 0; a < rows; a++) tp[a] = fp[a] = 0;
        for (int64_t i = start; i < end; i++) {
            const uint8_t *code = j->codes + j->order[i] * width;
#if defined(__GNUC__)
            if (i + 16 < end) __builtin_prefetch(j->codes + j->order[i + 16] * width); /* positions jump */
#endif
            for (int64_t a = 0; a < rows; a++) {
                int c = (code[a >> 2] >> ((a & 3) << 1)) & 3;
                if (c == CODE_TP) {
                    int64_t n = tp[a]++;
                    double t = (double)(n + 1), f = (double)fp[a];
                    pr[a * cap + n] = t / (f + t + DBL_EPSILON);
                    pos[a * cap + n] = i;
                } else if (c == CODE_FP) {
                    fp[a]++;
                }
            }
        }
        for (int64_t a = 0; a < rows; a++) {
            int64_t n = tp[a];
            double *p = pr + a * cap;
            for (int64_t i = n - 2; i >= 0; i--) /* the maximum from each to the end */
                if (p[i + 1] > p[i]) p[i] = p[i + 1];
            j->n_tp[a * j->k + c] = n;
            const int64_t *need = j->need + (a * j->k + c) * j->r;
            double *q = j->q + (a * j->k + c) * j->r, *ss = j->ss + (a * j->k + c) * j->r;
            for (int64_t r = 0; r < j->r; r++) {
                int64_t m = need[r];
                if (m == 0) { /* reached at the category's first position, whatever it is */
                    q[r] = n > 0 ? p[0] : 0.0;
                    ss[r] = end > start ? j->score[j->order[start]] : 0.0;
                } else if (m <= n) {
                    q[r] = p[m - 1];
                    ss[r] = j->score[j->order[pos[a * cap + m - 1]]];
                } else {
                    q[r] = 0.0;
                    ss[r] = 0.0;
                }
            }
        }
    }
    free(pr);
    free(pos);
    free(tp);
    free(fp);
    return 0;
}

static PyObject *accumulate(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer codes, order, first, score, need, q, ss, n_tp;
    long long at, k, r;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*LLL", &codes, &order, &first, &score, &need, &q, &ss, &n_tp, &at, &k, &r))
        return NULL;
    PyObject *result = NULL;
    int64_t n_order = order.len / (Py_ssize_t)sizeof(int64_t);
    if (at < 1 || k < 0 || r < 0 || codes.len % ((at + 3) / 4) || first.len != (Py_ssize_t)((k + 1) * sizeof(int64_t)) ||
        score.len != (Py_ssize_t)(codes.len / ((at + 3) / 4) * sizeof(double)) || need.len != (Py_ssize_t)(at * k * r * sizeof(int64_t)) ||
        q.len != (Py_ssize_t)(at * k * r * sizeof(double)) || ss.len != q.len ||
        n_tp.len != (Py_ssize_t)(at * k * sizeof(int64_t))) {
        PyErr_SetString(PyExc_ValueError, "accumulate: buffers of the wrong sizes");
        goto done;
    }
    const int64_t *o = order.buf, *f = first.buf;
    int64_t n_codes = codes.len / ((at + 3) / 4);
    int bad = k > 0 && (f[0] < 0 || f[k] > n_order);
    for (int64_t c = 0; c < k && !bad; c++) bad = f[c + 1] < f[c];
    for (int64_t i = 0; i < n_order && !bad; i++) bad = o[i] < 0 || o[i] >= n_codes;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "accumulate: positions out of range");
        goto done;
    }
    Job job = {codes.buf, o, f, score.buf, need.buf, q.buf, ss.buf, n_tp.buf, at, k, r};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&job);
    Py_END_ALLOW_THREADS
    if (status) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&order);
    PyBuffer_Release(&first);
    PyBuffer_Release(&score);
    PyBuffer_Release(&need);
    PyBuffer_Release(&q);
    PyBuffer_Release(&ss);
    PyBuffer_Release(&n_tp);
    return result;
}

static PyMethodDef methods[] = {
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(codes, order, first, score, need, q, ss, n_tp, at, k, r): fills q, ss (AT x K x R float64) and "
     "n_tp (AT x K int64) from codes (N x ceil(AT / 4) uint8, four 2-bit codes a byte), order (int64), first (K + 1 "
     "int64, into order), score (N float64, a detection's, read through order) and need (AT x K x R int64)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_accumulate", "Compiled accumulation (see accumulate.py).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__accumulate(void) { return PyModule_Create(&module); }
