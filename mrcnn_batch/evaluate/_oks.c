/* The terms of object keypoint similarity, compiled: for (detection, object) pairs, each
   labelled keypoint's e = (dx^2 + dy^2) / var / (area + eps) / 2, in double precision with the
   operations of COCOeval.computeOks in its order (built with -ffp-contract=off: nothing fused).
   The exponentials and the sums stay in numpy (mrcnn_batch/evaluate/match.py's _oks_pairs), so
   that OKS is numpy's to the bit. The GIL is released meanwhile. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>

static PyObject *terms(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer dk, gk, di, gi, var, area, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*", &dk, &gk, &di, &gi, &var, &area, &out)) return NULL;
    PyObject *result = NULL;
    int64_t k = var.len / (Py_ssize_t)sizeof(double), w = 3 * k, pairs = di.len / (Py_ssize_t)sizeof(int64_t);
    int64_t nd = k ? dk.len / (Py_ssize_t)(w * sizeof(double)) : 0, ng = k ? gk.len / (Py_ssize_t)(w * sizeof(double)) : 0;
    const int64_t *d = di.buf, *g = gi.buf;
    const double *gv = gk.buf;
    int bad = k < 1 || dk.len != (Py_ssize_t)(nd * w * sizeof(double)) || gk.len != (Py_ssize_t)(ng * w * sizeof(double)) ||
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
    const double *dv = dk.buf, *vr = var.buf, *ar = area.buf;
    double *e = out.buf;
    int64_t o = 0;
    for (int64_t p = 0; p < pairs; p++) {
        const double *a = dv + d[p] * w, *b = gv + g[p] * w;
        double scale = ar[p] + DBL_EPSILON;
        for (int64_t j = 0; j < k; j++) {
            if (!(b[3 * j + 2] > 0)) continue; /* labelled keypoints only */
            double dx = a[3 * j] - b[3 * j], dy = a[3 * j + 1] - b[3 * j + 1];
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

static PyMethodDef methods[] = {
    {"terms", terms, METH_VARARGS,
     "terms(dk, gk, d_index, g_index, var, area, out): fills out (float64) with e for each pair (d_index[p], g_index[p]) "
     "of rows of dk / gk (float64 x, y, v triples) and each keypoint j the object labels (v > 0), pair by pair; var "
     "(float64, per keypoint), area (float64, per pair)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_oks", "Compiled OKS terms (see match.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__oks(void) { return PyModule_Create(&module); }
