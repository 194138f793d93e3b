/* A COCO results file read straight into columns, compiled: the fast path of
   mrcnn_batch/evaluate/jsonio.py's read_results for the common file, a JSON array of objects
   with "image_id" and "category_id" (integers), "score" (a number), and any of "bbox",
   "keypoints" (arrays of numbers) and "segmentation" (an object of "size", two integers, and
   "counts", a string: compressed RLE); other fields are skipped (any JSON value). Whitespace and
   key order are free. Numbers are read as Python's json reads them: integers exactly, the others
   correctly rounded to the nearest double (Clinger's exact path for up to 19 digits and small
   exponents, strtod otherwise; where long double has a 64-bit or wider significand, also the
   exact path for 16 to 19 digits, see wide()).

   Anything else gives None and the file takes the slower paths, which read or word it: a field
   some results lack, a repeated key, a float or out-of-range id, true/false/null where a number
   is read, NaN or Infinity (not JSON; Python's parser takes them), a mask as polygons or counts
   as a list, an escape in a key or one other than \\ \" \/ in the counts, an empty array, or
   malformed JSON. The file is read a piece at a time (its whole bytes are never held), the
   columns handed over without a copy; the GIL is released while parsing. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t n, cap;
    size_t base; /* values moved out before these (a list's end offsets count on from them) */
} Buf;

/* Room for size more bytes after the n held (the capacity doubled as often as needed). */
static int reserve(Buf *b, size_t size) {
    if (b->n + size > b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 4096;
        while (cap < b->n + size) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    return 0;
}

static int put(Buf *b, const void *v, size_t size) {
    if (reserve(b, size)) return -1;
    memcpy(b->p + b->n, v, size);
    b->n += size;
    return 0;
}

enum { IMAGE, CATEGORY, SCORE, BBOX, KEYPOINTS, SEGM, FIELDS };
static const char *NAMES[FIELDS] = {"image_id", "category_id", "score", "bbox", "keypoints", "segmentation"};

typedef struct {
    const char *s, *end;
    int64_t rows;
    int present[FIELDS]; /* results holding each field */
    Buf image, category, score, bbox, bbox_at, kp, kp_at, size, size_at, counts, counts_at;
} Parser;

static void ws(Parser *q) {
    while (q->s < q->end && (*q->s == ' ' || *q->s == '\t' || *q->s == '\n' || *q->s == '\r')) q->s++;
}

static int expect(Parser *q, char c) {
    ws(q);
    if (q->s >= q->end || *q->s != c) return -1;
    q->s++;
    return 0;
}

/* After an item of an array or object: 1 if a comma follows (another item), 0 if the closing
   bracket does (consumed), -1 otherwise. */
static int more(Parser *q, char close) {
    ws(q);
    if (q->s < q->end && *q->s == ',') {
        q->s++;
        return 1;
    }
    return expect(q, close) ? -1 : 0;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

#if LDBL_MANT_DIG >= 64
static const long double POW10L[28] = {1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
                                       1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
                                       1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};

/* m x 10^exp10 correctly rounded to a double, for a mantissa of up to 19 digits (beyond 2^53,
   where Clinger's path stops) and |exp10| <= 27: m and 10^|exp10| (5^27 < 2^64) are exact in a
   long double of 64 or more significand bits, so one multiplication or division rounds once,
   to L; rounding L to a double is then the correct rounding of the exact value unless L lies
   exactly halfway between two doubles (the exact value may lie on either side): 0 there, and
   the caller takes strtod. */
static int wide(uint64_t m, int exp10, double *out) {
    if (exp10 < -27 || exp10 > 27) return 0;
    long double l = exp10 < 0 ? (long double)m / POW10L[-exp10] : (long double)m * POW10L[exp10];
    double d = (double)l;
    if (!isfinite(d) || d < DBL_MIN) return 0; /* (not reached from 19 digits and |exp10| <= 27) */
    long double up = ((long double)d + (long double)nextafter(d, INFINITY)) / 2;
    long double down = ((long double)d + (long double)nextafter(d, 0)) / 2;
    if (l == up || l == down) return 0;
    *out = d;
    return 1;
}
#endif

/* A JSON number: *integer says whether it had no fraction or exponent (then *i holds it, if it
   fits int64), *d its nearest double. */
static int number(Parser *q, double *d, int64_t *i, int *integer) {
    ws(q);
    const char *start = q->s, *s = q->s, *e = q->end;
    int neg = 0;
    if (s < e && *s == '-') {
        neg = 1;
        s++;
    }
    if (s >= e || *s < '0' || *s > '9') return -1;
    if (*s == '0' && s + 1 < e && s[1] >= '0' && s[1] <= '9') return -1; /* no leading zeros in JSON */
    uint64_t m = 0;
    int digits = 0, dropped = 0, exp10 = 0, frac = 0, ex = 0;
    for (; s < e && *s >= '0' && *s <= '9'; s++) {
        if (digits < 19) {
            m = 10 * m + (uint64_t)(*s - '0');
            if (m) digits++;
        } else {
            dropped++;
        }
    }
    if (s < e && *s == '.') {
        frac = 1;
        s++;
        if (s >= e || *s < '0' || *s > '9') return -1;
        for (; s < e && *s >= '0' && *s <= '9'; s++) {
            if (digits < 19) {
                m = 10 * m + (uint64_t)(*s - '0');
                if (m) digits++;
                exp10--;
            } else if (*s != '0') {
                dropped++;
            }
        }
    }
    if (s < e && (*s == 'e' || *s == 'E')) {
        ex = 1;
        s++;
        int eneg = 0;
        if (s < e && (*s == '+' || *s == '-')) eneg = *s++ == '-';
        if (s >= e || *s < '0' || *s > '9') return -1;
        int64_t v = 0;
        for (; s < e && *s >= '0' && *s <= '9'; s++)
            if (v < 100000) v = 10 * v + (*s - '0');
        exp10 += (int)(eneg ? -v : v);
    }
    q->s = s;
    *integer = !frac && !ex;
    if (*integer) { /* an integer: exact where it fits int64 (else no id) */
        *i = 0;
        if (dropped || m > (uint64_t)INT64_MAX + (uint64_t)neg) {
            *integer = 2; /* too large for int64 */
        } else {
            *i = neg ? (int64_t)(0 - m) : (int64_t)m;
        }
    }
#if LDBL_MANT_DIG >= 64
    double w;
#endif
    if (!dropped && m <= ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = (double)m; /* exact, and one rounding below: the nearest double */
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
        *d = neg && !(*integer && m == 0) ? -v : v; /* an integer -0 is 0 (Python: float(int("-0"))) */
#if LDBL_MANT_DIG >= 64
    } else if (!dropped && m && wide(m, exp10, &w)) {
        *d = neg ? -w : w;
#endif
    } else {
        char tmp[512];
        size_t len = (size_t)(s - start);
        if (len >= sizeof tmp) return -1;
        memcpy(tmp, start, len);
        tmp[len] = 0;
        char *stop;
        *d = strtod(tmp, &stop);
        if (stop != tmp + len) return -1; /* (a locale with another decimal point) */
    }
    return 0;
}

/* A JSON string's raw bytes (between the quotes), unescaping \\ \" \/ into out if given. */
static int string(Parser *q, Buf *out) {
    if (expect(q, '"')) return -1;
    const char *s = q->s, *e = q->end;
    while (s < e && *s != '"') {
        const char *run = s;
        while (s < e && *s != '"' && *s != '\\') {
            if ((unsigned char)*s < 0x20) return -1;
            s++;
        }
        if (out && put(out, run, (size_t)(s - run))) return -1;
        if (s < e && *s == '\\') {
            if (s + 1 >= e) return -1;
            char c = s[1];
            if (c == '\\' || c == '"' || c == '/') {
                if (out && put(out, s + 1, 1)) return -1;
                s += 2;
            } else if (!out && (c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't')) {
                s += 2; /* (in a value skipped) */
            } else if (!out && c == 'u' && e - s >= 6) {
                for (int k = 2; k < 6; k++)
                    if (!((s[k] >= '0' && s[k] <= '9') || (s[k] >= 'a' && s[k] <= 'f') || (s[k] >= 'A' && s[k] <= 'F'))) return -1;
                s += 6;
            } else {
                return -1;
            }
        }
    }
    if (s >= e) return -1;
    q->s = s + 1;
    return 0;
}

/* An object's key and the colon after it: its raw bytes and length (NULL if malformed). */
static const char *field_name(Parser *q, size_t *len) {
    ws(q);
    const char *key = q->s + 1;
    if (string(q, NULL)) return NULL;
    *len = (size_t)(q->s - 1 - key); /* string() stopped just past the closing quote */
    if (memchr(key, '\\', *len)) return NULL; /* an escaped key might spell a field's name */
    return expect(q, ':') ? NULL : key;
}

/* Which of the n names a key is (its raw bytes), or -1. */
static int field_of(const char *key, size_t len, const char *const *names, int n) {
    for (int k = 0; k < n; k++)
        if (strlen(names[k]) == len && !memcmp(key, names[k], len)) return k;
    return -1;
}

static int skip_value(Parser *q, int depth);

static int skip_container(Parser *q, char open, char close, int depth) {
    if (depth > 64 || expect(q, open)) return -1;
    ws(q);
    if (q->s < q->end && *q->s == close) {
        q->s++;
        return 0;
    }
    for (;;) {
        if (open == '{' && (string(q, NULL) || expect(q, ':'))) return -1;
        if (skip_value(q, depth + 1)) return -1;
        int next = more(q, close);
        if (next <= 0) return next;
    }
}

static int skip_value(Parser *q, int depth) {
    ws(q);
    if (q->s >= q->end) return -1;
    char c = *q->s;
    if (c == '"') return string(q, NULL);
    if (c == '{') return skip_container(q, '{', '}', depth);
    if (c == '[') return skip_container(q, '[', ']', depth);
    for (const char *lit = c == 't' ? "true" : c == 'f' ? "false" : c == 'n' ? "null" : NULL; lit;) {
        size_t n = strlen(lit);
        if ((size_t)(q->end - q->s) < n || memcmp(q->s, lit, n)) return -1;
        q->s += n;
        return 0;
    }
    double d;
    int64_t i;
    int integer;
    return number(q, &d, &i, &integer);
}

/* An array of numbers into values (float64, or int64 if ints), its end offset into at (int32). */
static int numbers(Parser *q, Buf *values, Buf *at, int ints) {
    if (expect(q, '[')) return -1;
    ws(q);
    if (q->s < q->end && *q->s == ']') {
        q->s++;
    } else {
        for (;;) {
            double d;
            int64_t i;
            int integer;
            if (number(q, &d, &i, &integer)) return -1;
            if (ints ? integer != 1 || put(values, &i, 8) : put(values, &d, 8)) return -1;
            int next = more(q, ']');
            if (next < 0) return -1;
            if (!next) break;
        }
    }
    size_t count = values->base + values->n / 8;
    if (count > INT32_MAX) return -1;
    int32_t end = (int32_t)count;
    return put(at, &end, 4);
}

static int segmentation(Parser *q) {
    int seen_size = 0, seen_counts = 0;
    if (expect(q, '{')) return -1;
    for (;;) {
        size_t len;
        const char *key = field_name(q, &len);
        if (!key) return -1;
        if (len == 4 && !memcmp(key, "size", 4) && !seen_size++) {
            if (numbers(q, &q->size, &q->size_at, 1)) return -1;
        } else if (len == 6 && !memcmp(key, "counts", 6) && !seen_counts++) {
            ws(q);
            if (q->s >= q->end || *q->s != '"' || string(q, &q->counts)) return -1;
            int32_t end = (int32_t)q->counts.n;
            if (q->counts.n > INT32_MAX || put(&q->counts_at, &end, 4)) return -1;
        } else {
            return -1; /* another field, or one twice: not compressed RLE as evaluation reads it */
        }
        int next = more(q, '}');
        if (next < 0) return -1;
        if (!next) return seen_size && seen_counts ? 0 : -1;
    }
}

static int result(Parser *q) {
    int seen[FIELDS] = {0};
    if (expect(q, '{')) return -1;
    ws(q);
    if (q->s < q->end && *q->s == '}') return -1; /* {}: no id */
    for (;;) {
        size_t len;
        const char *key = field_name(q, &len);
        if (!key) return -1;
        int f = field_of(key, len, NAMES, FIELDS);
        if (f < 0) {
            if (skip_value(q, 0)) return -1;
        } else {
            if (seen[f]++) return -1; /* a repeated key */
            double d;
            int64_t i;
            int integer;
            switch (f) {
            case IMAGE:
            case CATEGORY:
                if (number(q, &d, &i, &integer) || integer != 1 || put(f == IMAGE ? &q->image : &q->category, &i, 8)) return -1;
                break;
            case SCORE:
                if (number(q, &d, &i, &integer) || put(&q->score, &d, 8)) return -1;
                break;
            case BBOX:
                if (numbers(q, &q->bbox, &q->bbox_at, 0)) return -1;
                break;
            case KEYPOINTS:
                if (numbers(q, &q->kp, &q->kp_at, 0)) return -1;
                break;
            case SEGM:
                if (segmentation(q)) return -1;
                break;
            }
        }
        int next = more(q, '}');
        if (next < 0) return -1;
        if (!next) break;
    }
    q->rows++;
    for (int k = 0; k < FIELDS; k++) q->present[k] += seen[k];
    return 0;
}

/* The state of a results file read a piece at a time (read_results): whether its opening "["
   and its closing "]" were read. */
typedef struct {
    int opened, closed;
} Stream;

enum { COLUMNS = 11 };

static Buf *column(Parser *q, int k) {
    Buf *all[COLUMNS] = {&q->image, &q->category, &q->score, &q->bbox, &q->bbox_at, &q->kp,
                         &q->kp_at, &q->size, &q->size_at, &q->counts, &q->counts_at};
    return all[k];
}

/* What the columns held before a result: to take a result cut at the end back. */
typedef struct {
    size_t n[COLUMNS];
    int64_t rows;
    int present[FIELDS];
} Mark;

static void mark(Parser *q, Mark *m) {
    for (int k = 0; k < COLUMNS; k++) m->n[k] = column(q, k)->n;
    m->rows = q->rows;
    memcpy(m->present, q->present, sizeof m->present);
}

static void take_back(Parser *q, const Mark *m) {
    for (int k = 0; k < COLUMNS; k++) column(q, k)->n = m->n[k];
    q->rows = m->rows;
    memcpy(q->present, m->present, sizeof m->present);
}

/* Read the results in q->s..q->end, the bytes that follow those fed before; final: none follow.
   1: the document was read whole; 0: more bytes are needed (q->s: the first byte to keep, the
   start of a result cut at the end, whose columns were taken back); -1: not a plain results
   file. A result that cannot be read with more than `limit` bytes from its start on is refused
   (malformed, or too long for this reader: the slower paths read it). Whatever the cuts, the
   columns are those of the whole document: a result is kept only once its closing brace and
   the comma or bracket after it were read, so no token of it was cut. */
static int feed(Parser *q, Stream *st, int final, size_t limit) {
    if (!st->opened) {
        ws(q);
        if (q->s >= q->end) return final ? -1 : 0;
        if (*q->s != '[') return -1;
        q->s++;
        st->opened = 1;
    }
    while (!st->closed) {
        const char *start = q->s;
        Mark m;
        mark(q, &m);
        int next = result(q) ? -1 : more(q, ']');
        if (next < 0) {
            if (final || (size_t)(q->end - start) > limit) return -1;
            take_back(q, &m);
            q->s = start;
            return 0;
        }
        st->closed = !next;
    }
    ws(q);
    if (q->s != q->end) return -1;
    if (!final) return 0;
    for (int k = 0; k < FIELDS; k++) /* every result has a field, or none */
        if (q->present[k] != 0 && q->present[k] != q->rows) return -1;
    return q->present[IMAGE] && q->present[CATEGORY] && q->present[SCORE] ? 1 : -1;
}

/* A column handed to Python without a copy: a read-only buffer that frees its memory. */
typedef struct {
    PyObject_HEAD char *p;
    Py_ssize_t n;
} Block;

static void block_dealloc(Block *b) {
    free(b->p);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int block_getbuffer(Block *b, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)b, b->p ? b->p : (char *)"", b->n, 1, flags);
}

static PyBufferProcs block_as_buffer = {(getbufferproc)block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mrcnn_batch.evaluate._results.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A column read by this module: its bytes through the buffer protocol, freed with it.",
};

/* The Buf as a Block, which takes its memory (cut to its length); NULL on failure. */
static PyObject *block_of(Buf *b) {
    Block *out = PyObject_New(Block, &BlockType);
    if (!out) return NULL;
    char *p = b->n && b->n < b->cap ? realloc(b->p, b->n) : NULL;
    out->p = p ? p : b->p;
    out->n = (Py_ssize_t)b->n;
    b->p = NULL;
    b->n = b->cap = 0;
    return (PyObject *)out;
}

/* A column of reals (boxes, keypoints) kept as float32 while every value read is a float32
   exactly (a run's own export is: half the memory). After each piece, the values it added to
   the parser's column (doubles; every result in it complete) move to narrow as float32s and
   the column's offsets count on from its base; at the first value that is not a float32, the
   float32s moved so far are widened back in front of the column's doubles, which then stay
   (wide). 0, or -1 out of memory. */
static int flush_reals(Buf *column, Buf *narrow, int *wide) {
    if (*wide) return 0;
    size_t n = column->n / 8;
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, column->p + 8 * i, 8);
        if (!(fabs(v) <= FLT_MAX) || (double)(float)v != v) { /* NaN, beyond float's range, or not a float */
            *wide = 1;
            break;
        }
    }
    if (*wide) {
        size_t m = narrow->n / 4;
        char *all = malloc((m + n) * 8 + 1);
        if (!all) return -1;
        for (size_t j = 0; j < m; j++) {
            float f;
            memcpy(&f, narrow->p + 4 * j, 4);
            double d = f;
            memcpy(all + 8 * j, &d, 8);
        }
        if (n) memcpy(all + 8 * m, column->p, 8 * n);
        free(column->p);
        free(narrow->p);
        memset(narrow, 0, sizeof *narrow);
        column->p = all;
        column->n = column->cap = (m + n) * 8;
        column->base = 0;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, column->p + 8 * i, 8);
        float f = (float)v;
        if (put(narrow, &f, 4)) return -1;
    }
    column->base += n;
    column->n = 0;
    return 0;
}

/* Append the next bytes of the file to the window, a NUL kept after them: 1 at the end of the
   file, 0 otherwise, -1 with an exception set. With into, read is the file's readinto, given a
   view of the window's free end (no bytes object of each piece beside the window); else it is
   its read, called with chunk. */
static int fill(PyObject *read, int into, Py_ssize_t chunk, Buf *window) {
    if (into) {
        size_t n = window->n;
        if (reserve(window, (size_t)chunk + 1)) { /* room for a piece and the NUL */
            PyErr_NoMemory();
            return -1;
        }
        PyObject *view = PyMemoryView_FromMemory(window->p + n, chunk, PyBUF_WRITE);
        if (!view) return -1;
        PyObject *got = PyObject_CallOneArg(read, view);
        PyObject *released = PyObject_CallMethod(view, "release", NULL); /* (a view kept by the file reads nothing after) */
        Py_DECREF(view);
        if (!released) { /* the file holds a buffer of the window: it would see the window move */
            Py_XDECREF(got);
            return -1;
        }
        Py_DECREF(released);
        if (!got) return -1;
        Py_ssize_t k = got == Py_None ? -1 : PyLong_AsSsize_t(got);
        Py_DECREF(got);
        if (k < 0 || k > chunk) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_OSError, "readinto() gave no count of the bytes it read");
            return -1;
        }
        window->n = n + (size_t)k;
        window->p[window->n] = 0;
        return k == 0;
    }
    PyObject *got = PyObject_CallFunction(read, "n", chunk);
    if (!got) return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(got, &view, PyBUF_SIMPLE)) {
        Py_DECREF(got);
        return -1;
    }
    char nul = 0;
    int failed = put(window, view.buf, (size_t)view.len) || put(window, &nul, 1);
    int end = view.len == 0;
    PyBuffer_Release(&view);
    Py_DECREF(got);
    if (failed) {
        PyErr_NoMemory();
        return -1;
    }
    window->n--; /* (the NUL stays past the end) */
    return end;
}

static PyObject *read_results(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *read;
    Py_ssize_t chunk, longest;
    int into = 0;
    if (!PyArg_ParseTuple(args, "Onn|p", &read, &chunk, &longest, &into)) return NULL;
    if (chunk < 1 || longest < 0) {
        PyErr_SetString(PyExc_ValueError, "chunk must be positive, longest not negative");
        return NULL;
    }
    Parser q;
    memset(&q, 0, sizeof q);
    Stream st = {0, 0};
    Buf window = {NULL, 0, 0, 0}, bbox32 = {NULL, 0, 0, 0}, kp32 = {NULL, 0, 0, 0};
    int bbox_wide = 0, kp_wide = 0;
    int32_t zero = 0;
    int status = put(&q.bbox_at, &zero, 4) || put(&q.kp_at, &zero, 4) || put(&q.size_at, &zero, 4) || put(&q.counts_at, &zero, 4) ? -1 : 0;
    int failed = status != 0;
    while (status == 0) {
        int end = fill(read, into, chunk, &window);
        if (end < 0) {
            failed = 1;
            break;
        }
        q.s = window.p;
        q.end = window.p + window.n;
        int flushed = 0;
        Py_BEGIN_ALLOW_THREADS
        status = feed(&q, &st, end, (size_t)longest);
        if (status >= 0) flushed = flush_reals(&q.bbox, &bbox32, &bbox_wide) || flush_reals(&q.kp, &kp32, &kp_wide) ? -1 : 0;
        Py_END_ALLOW_THREADS
        if (flushed) {
            failed = 1;
            break;
        }
        size_t used = (size_t)(q.s - window.p); /* the rest: the start of a result cut at the end */
        memmove(window.p, window.p + used, window.n - used + 1);
        window.n -= used;
    }
    PyObject *result = NULL;
    if (failed) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
    } else if (status != 1) {
        result = Py_NewRef(Py_None);
    } else {
        PyObject *present = PyTuple_New(FIELDS);
        for (int k = 0; present && k < FIELDS; k++) PyTuple_SET_ITEM(present, k, PyBool_FromLong(q.present[k] > 0));
        result = present ? Py_BuildValue("(LNNNNNNNNNNNN(OO))", (long long)q.rows, present, block_of(&q.image),
                                         block_of(&q.category), block_of(&q.score),
                                         block_of(bbox_wide ? &q.bbox : &bbox32), block_of(&q.bbox_at),
                                         block_of(kp_wide ? &q.kp : &kp32), block_of(&q.kp_at), block_of(&q.size),
                                         block_of(&q.size_at), block_of(&q.counts), block_of(&q.counts_at),
                                         bbox_wide ? Py_False : Py_True, kp_wide ? Py_False : Py_True)
                         : NULL;
    }
    for (int k = 0; k < COLUMNS; k++) free(column(&q, k)->p);
    free(window.p);
    free(bbox32.p);
    free(kp32.p);
    return result;
}

/* -- ground truth: the annotations' columns (no masks), the spans of "images" and "categories" -- */
enum { A_ID, A_IMAGE, A_CATEGORY, A_AREA, A_CROWD, A_BBOX, A_KP, A_NK, A_FIELDS };
static const char *A_NAMES[A_FIELDS] = {"id", "image_id", "category_id", "area", "iscrowd", "bbox", "keypoints", "num_keypoints"};

typedef struct {
    Buf id, image, category, area, crowd, bbox, bbox_at, kp, kp_at, has_kp, nk, has_nk;
    int64_t rows;
} Annotations;

static int annotation(Parser *q, Annotations *a) {
    int seen[A_FIELDS] = {0};
    if (expect(q, '{')) return -1;
    ws(q);
    if (q->s < q->end && *q->s == '}') return -1;
    for (;;) {
        size_t len;
        const char *key = field_name(q, &len);
        if (!key) return -1;
        int f = field_of(key, len, A_NAMES, A_FIELDS);
        double d;
        int64_t i;
        int integer;
        if (f < 0) {
            if (skip_value(q, 0)) return -1; /* segmentation, and any other field */
        } else if (seen[f]++) {
            return -1; /* a repeated key */
        } else if (f == A_ID || f == A_IMAGE || f == A_CATEGORY || f == A_CROWD || f == A_NK) {
            Buf *to = f == A_ID ? &a->id : f == A_IMAGE ? &a->image : f == A_CATEGORY ? &a->category : f == A_CROWD ? &a->crowd : &a->nk;
            if (number(q, &d, &i, &integer) || integer != 1 || put(to, &i, 8)) return -1;
        } else if (f == A_AREA) {
            if (number(q, &d, &i, &integer) || put(&a->area, &d, 8)) return -1;
        } else if (f == A_BBOX) {
            size_t before = a->bbox.n;
            if (numbers(q, &a->bbox, &a->bbox_at, 0) || a->bbox.n - before != 4 * sizeof(double)) return -1;
        } else if (numbers(q, &a->kp, &a->kp_at, 0)) { /* A_KP */
            return -1;
        }
        int next = more(q, '}');
        if (next < 0) return -1;
        if (!next) break;
    }
    for (int k = 0; k <= A_BBOX; k++)
        if (!seen[k]) return -1; /* ids, area, iscrowd and bbox: every annotation has them here */
    int64_t zero = 0;
    uint8_t has_kp = (uint8_t)seen[A_KP], has_nk = (uint8_t)seen[A_NK];
    if (!has_kp) { /* an empty list: kp_at repeats the end */
        int32_t end = (int32_t)(a->kp.n / 8);
        if (put(&a->kp_at, &end, 4)) return -1;
    }
    if (!has_nk && put(&a->nk, &zero, 8)) return -1;
    if (put(&a->has_kp, &has_kp, 1) || put(&a->has_nk, &has_nk, 1)) return -1;
    a->rows++;
    return 0;
}

static int ground_truth(Parser *q, Annotations *a, Py_ssize_t spans[4]) {
    int seen_images = 0, seen_categories = 0, seen_annotations = 0;
    int32_t zero = 0;
    if (put(&a->bbox_at, &zero, 4) || put(&a->kp_at, &zero, 4)) return -1;
    const char *base = q->s;
    if (expect(q, '{')) return -1;
    for (;;) {
        size_t len;
        const char *key = field_name(q, &len);
        if (!key) return -1;
        ws(q);
        if (len == 11 && !memcmp(key, "annotations", 11)) {
            if (seen_annotations++ || expect(q, '[')) return -1;
            ws(q);
            if (q->s < q->end && *q->s == ']') {
                q->s++;
            } else {
                for (;;) {
                    if (annotation(q, a)) return -1;
                    int next = more(q, ']');
                    if (next < 0) return -1;
                    if (!next) break;
                }
            }
        } else if ((len == 6 && !memcmp(key, "images", 6)) || (len == 10 && !memcmp(key, "categories", 10))) {
            int images = len == 6;
            if ((images ? seen_images++ : seen_categories++) || q->s >= q->end || *q->s != '[') return -1;
            spans[images ? 0 : 2] = q->s - base;
            if (skip_value(q, 0)) return -1;
            spans[images ? 1 : 3] = q->s - base;
        } else if (skip_value(q, 0)) {
            return -1;
        }
        int next = more(q, '}');
        if (next < 0) return -1;
        if (!next) break;
    }
    ws(q);
    return q->s == q->end && seen_images && seen_categories && seen_annotations ? 0 : -1;
}

static PyObject *read_ground_truth(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    Parser q;
    Annotations a;
    memset(&q, 0, sizeof q);
    memset(&a, 0, sizeof a);
    q.s = data.buf;
    q.end = q.s + data.len;
    Py_ssize_t spans[4] = {0, 0, 0, 0};
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = ground_truth(&q, &a, spans);
    Py_END_ALLOW_THREADS
    PyObject *result = status ? Py_NewRef(Py_None)
                              : Py_BuildValue("(L(nnnn)NNNNNNNNNNN)", (long long)a.rows, spans[0], spans[1], spans[2], spans[3],
                                              block_of(&a.id), block_of(&a.image), block_of(&a.category), block_of(&a.area),
                                              block_of(&a.crowd), block_of(&a.bbox), block_of(&a.kp), block_of(&a.kp_at),
                                              block_of(&a.has_kp), block_of(&a.nk), block_of(&a.has_nk));
    Buf *all[] = {&a.id, &a.image, &a.category, &a.area, &a.crowd, &a.bbox, &a.bbox_at, &a.kp, &a.kp_at, &a.has_kp, &a.nk, &a.has_nk};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++) free(all[k]->p);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"read", read_results, METH_VARARGS,
     "read(read, chunk, longest, into=False) -> None or (rows, present, image_id, category_id, score, bbox, bbox_at, keypoints, "
     "keypoints_at, size, size_at, counts, counts_at, (bbox_float32, keypoints_float32)): the columns of a plain "
     "COCO results file, its bytes got by "
     "calling read(chunk) until it gives none (a file's read method; with into, its readinto, given a view of chunk bytes "
     "to fill), as buffers (int64 / float64 values, int32 "
     "list offsets, counts' characters; bbox and keypoints values float32 where every one of them is one exactly, "
     "as the last two flags say); present: which of image_id, category_id, score, bbox, keypoints, "
     "segmentation every result has. The file is held a piece at a time: a result cut at a piece's end is read again "
     "with the next; one that cannot be read with longest bytes from its start on gives None."},
    {"ground_truth", read_ground_truth, METH_VARARGS,
     "ground_truth(data) -> None or (rows, (images_start, images_end, categories_start, categories_end), id, image_id, "
     "category_id, area, iscrowd, bbox, keypoints, keypoints_at, has_keypoints, num_keypoints, has_num_keypoints): "
     "a COCO annotations file's annotations as columns (int64 / float64 values, int32 list offsets, uint8 "
     "flags; segmentation and other fields skipped, each checked to be JSON) and the byte spans of its images and "
     "categories arrays; None where an annotation lacks an id, image_id, category_id, area, iscrowd or a bbox of "
     "four numbers, has a field twice, a float id or iscrowd, or anything is not plain JSON."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_results", "Compiled reader of COCO results files (see jsonio.py).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__results(void) {
    if (PyType_Ready(&BlockType) < 0) return NULL;
    return PyModule_Create(&module);
}
