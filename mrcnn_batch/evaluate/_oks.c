/* The terms of object keypoint similarity, compiled: for (detection, object) pairs, each
   labelled keypoint's e = (dx^2 + dy^2) / var / (area + eps) / 2, in double precision with the
   operations of COCOeval.computeOks in its order (built with -ffp-contract=off: nothing fused).
   The exponentials and the sums stay in numpy (mrcnn_batch/evaluate/match.py's _oks_pairs), so
   that OKS is numpy's to the bit. The GIL is released meanwhile.
   Also each row's keypoint extent (min / max of x and of y, NaN left out), which bounds the
   pairs worth an OKS. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

/* A value of a float64 array, or of a float32 one widened (exactly): a run's keypoints stay float32. */
static inline double real(const void *p, int wide, int64_t i) { return wide ? ((const double *)p)[i] : (double)((const float *)p)[i]; }

static PyObject *terms(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer dk, gk, di, gi, var, area, out;
    int dwide;
    if (!PyArg_ParseTuple(args, "y*py*y*y*y*y*w*", &dk, &dwide, &gk, &di, &gi, &var, &area, &out)) return NULL;
    PyObject *result = NULL;
    int64_t k = var.len / (Py_ssize_t)sizeof(double), w = 3 * k, pairs = di.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t dsize = dwide ? sizeof(double) : sizeof(float);
    int64_t nd = k ? dk.len / (Py_ssize_t)(w * dsize) : 0, ng = k ? gk.len / (Py_ssize_t)(w * sizeof(double)) : 0;
    const int64_t *d = di.buf, *g = gi.buf;
    const double *gv = gk.buf;
    int bad = k < 1 || dk.len != (Py_ssize_t)(nd * w * dsize) || gk.len != (Py_ssize_t)(ng * w * sizeof(double)) ||
              gi.len != di.len || area.len != (Py_ssize_t)(pairs * sizeof(double));
    int64_t n = 0;
    for (int64_t p = 0; p < pairs && !bad; p++) {
        bad = d[p] < 0 || d[p] >= nd || g[p] < 0 || g[p] >= ng;
        for (int64_t j = 0; j < k && !bad; j++) n += gv[g[p] * w + 3 * j + 2] > 0;
    }
    if (bad || out.len != (Py_ssize_t)(n * sizeof(double))) {
        PyErr_SetString(PyExc_ValueError, "terms: buffers of the wrong sizes");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const double *vr = var.buf, *ar = area.buf;
    double *e = out.buf;
    int64_t o = 0;
    for (int64_t p = 0; p < pairs; p++) {
        const double *b = gv + g[p] * w;
        int64_t a = d[p] * w;
        double scale = ar[p] + DBL_EPSILON;
        for (int64_t j = 0; j < k; j++) {
            if (!(b[3 * j + 2] > 0)) continue; /* labelled keypoints only */
            double dx = real(dk.buf, dwide, a + 3 * j) - b[3 * j], dy = real(dk.buf, dwide, a + 3 * j + 1) - b[3 * j + 1];
            e[o++] = (dx * dx + dy * dy) / vr[j] / scale / 2;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&dk);
    PyBuffer_Release(&gk);
    PyBuffer_Release(&di);
    PyBuffer_Release(&gi);
    PyBuffer_Release(&var);
    PyBuffer_Release(&area);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *extent(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer off, val, rows, out;
    int labelled, wide;
    if (!PyArg_ParseTuple(args, "y*y*py*pw*", &off, &val, &wide, &rows, &labelled, &out)) return NULL;
    PyObject *result = NULL;
    int64_t n_off = off.len / (Py_ssize_t)sizeof(int64_t), n_val = val.len / (Py_ssize_t)(wide ? sizeof(double) : sizeof(float));
    int64_t n = rows.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *o = off.buf, *r = rows.buf;
    int bad = out.len != (Py_ssize_t)(4 * n * sizeof(double));
    for (int64_t i = 0; i < n && !bad; i++) {
        int64_t a = r[i];
        bad = a < 0 || a + 1 >= n_off || o[a] < 0 || o[a + 1] < o[a] || o[a] / 3 * 3 + (o[a + 1] - o[a]) / 3 * 3 > n_val;
    }
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "extent: buffers of the wrong sizes");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    double *x0 = out.buf, *y0 = x0 + n, *x1 = y0 + n, *y1 = x1 + n;
    for (int64_t i = 0; i < n; i++) {
        int64_t a = r[i], count = (o[a + 1] - o[a]) / 3, at = o[a] / 3 * 3;
        double lx = INFINITY, ly = INFINITY, hx = -INFINITY, hy = -INFINITY;
        for (int64_t j = 0; j < count; j++, at += 3) {
            double x = real(val.buf, wide, at), y = real(val.buf, wide, at + 1);
            if (labelled && !(real(val.buf, wide, at + 2) > 0)) continue; /* labelled keypoints only */
            if (!isnan(x)) {
                if (x < lx) lx = x;
                if (x > hx) hx = x;
            }
            if (!isnan(y)) {
                if (y < ly) ly = y;
                if (y > hy) hy = y;
            }
        }
        x0[i] = lx, y0[i] = ly, x1[i] = hx, y1[i] = hy;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&off);
    PyBuffer_Release(&val);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"terms", terms, METH_VARARGS,
     "terms(dk, dk_float64, gk, d_index, g_index, var, area, out): fills out (float64) with e for each pair (d_index[p], "
     "g_index[p]) of rows of dk / gk (x, y, v triples; gk float64, dk float64 or, dk_float64 false, float32 widened) "
     "and each keypoint j the object labels (v > 0), pair by pair; var (float64, per keypoint), area (float64, per pair)."},
    {"extent", extent, METH_VARARGS,
     "extent(offsets, values, values_float64, rows, labelled_only, out): out (float64, 4 x len(rows)) = x0, y0, x1, y1 "
     "of each row's (values float64 or, values_float64 false, float32) "
     "keypoints (values[offsets[row]:offsets[row + 1]], x, y, v triples; NaN left out; labelled_only: v > 0 only), "
     "+inf / -inf where there is none."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_oks", "Compiled OKS terms (see match.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__oks(void) { return PyModule_Create(&module); }
