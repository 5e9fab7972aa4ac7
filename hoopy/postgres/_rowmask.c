/* The optional C twin of hoopy/postgres/rowbatch.py's email_rows_py: a run of DataRows masked
 * for the email pattern. Same walk, same checks, same output bytes, same counts; every value the
 * Python batch hands to RowPlan.value (a mark other than "@", a column that is not FAST) and
 * every row it hands to RowPlan.rewrite (no column count, more values than columns) goes to the
 * same Python method here. The Python code stays the reference (tests/test_postgres_rowmask_c.py
 * compares the two); rowbatch.py uses this only when it imports and the regexes it reproduces
 * (DOMAIN, LOCAL below) are still masking.py's.
 *
 * Bounds: every read is inside [start, end) of the buffer, end <= its length (the caller checks);
 * a row is read only inside its own declared length, itself inside the run. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef ROWMASK_SOURCE
#define ROWMASK_SOURCE ""
#endif

/* The regexes this file reproduces, as masking.py spells them (rowbatch.py compares them). */
#define DOMAIN_RE "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
#define LOCAL_RE "[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]"
#define FAST 5

static PyObject *EMAIL; /* "email", the key of plan.patterns */

static unsigned char MARK[256];  /* @ % \ & + and every byte >= 0x80: rowbatch's _MARKS */
static unsigned char OTHER[256]; /* a mark but "@" */
static unsigned char ALNUM[256]; /* [A-Za-z0-9] */
static unsigned char LDH[256];   /* [A-Za-z0-9-] */
static unsigned char LOCAL[256]; /* _LOCAL */

static void
init_tables(void)
{
    const char *local_punct = ".!#$%&'*+/=?^_`{|}~-";
    int c;
    for (c = 0; c < 256; c++) {
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        ALNUM[c] = (unsigned char)alnum;
        LDH[c] = (unsigned char)(alnum || c == '-');
        LOCAL[c] = (unsigned char)(alnum || (c != 0 && strchr(local_punct, c) != NULL));
        MARK[c] = (unsigned char)(c == '@' || c == '%' || c == '\\' || c == '&' || c == '+' || c >= 0x80);
        OTHER[c] = (unsigned char)(MARK[c] && c != '@');
    }
}

static inline int32_t
be32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static inline Py_ssize_t
next_mark(const unsigned char *b, Py_ssize_t from, Py_ssize_t end)
{
    while (from < end && !MARK[b[from]])
        from++;
    return from;
}

/* Where "@" + DOMAIN_RE, matched by Python's re at b[at] with endpos lim, ends; -1: no match.
 * The regex's choices, in its order: the first label must end where its run of [A-Za-z0-9-]
 * ends (only a "." may follow it), so that run is at most 63 long and ends in a letter or digit;
 * every later label takes the longest of its choices (nothing after the greedy "+" can fail),
 * at most 63 characters ending in a letter or digit, and the repetition stops at the first
 * label not followed by "." and a letter or digit. Each byte is read at most twice. */
static Py_ssize_t
at_domain(const unsigned char *b, Py_ssize_t at, Py_ssize_t lim)
{
    Py_ssize_t p = at + 1, q, r, last, found = -1;
    if (p >= lim || !ALNUM[b[p]])
        return -1;
    q = p + 1;
    while (q < lim && q - p < 64 && LDH[b[q]])
        q++;
    if (q - p > 63 || !ALNUM[b[q - 1]])
        return -1;
    while (q + 1 < lim && b[q] == '.' && ALNUM[b[q + 1]]) {
        p = q + 1;
        last = r = p + 1;
        while (r < lim && r - p < 63 && LDH[b[r]]) {
            if (ALNUM[b[r]])
                last = r + 1;
            r++;
        }
        found = q = last;
    }
    return found;
}

/* The output: a growing byte buffer. */
typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static int
out_reserve(Out *o, Py_ssize_t more)
{
    Py_ssize_t need, cap;
    char *nb;
    if (more > PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    need = o->len + more;
    if (need <= o->cap)
        return 0;
    cap = o->cap ? o->cap : 4096;
    while (cap < need)
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    nb = PyMem_Realloc(o->buf, (size_t)cap);
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = nb;
    o->cap = cap;
    return 0;
}

static int
out_put(Out *o, const void *p, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (out_reserve(o, n) < 0)
        return -1;
    memcpy(o->buf + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

static void
put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static int
out_i32(Out *o, int64_t v, PyObject *perr)
{
    char b[4];
    if (v > INT32_MAX || v < INT32_MIN) {
        /* struct.pack("!i") fails, which email_rows_py turns into ProtocolError */
        PyErr_SetString(perr, "bad DataRow");
        return -1;
    }
    put_be32(b, (uint32_t)(int32_t)v);
    return out_put(o, b, 4);
}

/* A callback failed: struct.error becomes ProtocolError, as email_rows_py's except clause does. */
static void
callback_failed(PyObject *perr, PyObject *serr)
{
    if (PyErr_ExceptionMatches(serr)) {
        PyErr_Clear();
        PyErr_SetString(perr, "bad DataRow");
    }
}

/* Appends a bytes-like object; -1 with an exception set. */
static int
out_obj(Out *o, PyObject *obj, Py_ssize_t *len)
{
    Py_buffer v;
    int r;
    if (PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE) < 0)
        return -1;
    if (len != NULL)
        *len = v.len;
    r = out_put(o, v.buf, v.len);
    PyBuffer_Release(&v);
    return r;
}

/* email_rows(plan, raw, start, end, mask, ProtocolError, struct.error) -> (bytes or None, stop, rows) */
static PyObject *
email_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *plan, *perr, *serr, *kinds_obj = NULL, *kinds_seq = NULL, *result = NULL;
    PyObject *value_m = NULL, *rewrite_m = NULL;
    Py_buffer raw, maskb;
    int have_raw = 0, have_mask = 0;
    long *kinds = NULL;
    Py_ssize_t ncols, start, end, pos, run, mk, rows = 0, i;
    long long found = 0;
    int changed = 0;
    Out o = {NULL, 0, 0};
    const unsigned char *b;
    const char *mask;
    Py_ssize_t mask_len;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "email_rows takes 7 arguments");
        return NULL;
    }
    plan = args[0];
    perr = args[5];
    serr = args[6];
    start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    end = PyLong_AsSsize_t(args[3]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[1], &raw, PyBUF_SIMPLE) < 0)
        goto done;
    have_raw = 1;
    if (PyObject_GetBuffer(args[4], &maskb, PyBUF_SIMPLE) < 0)
        goto done;
    have_mask = 1;
    if (start < 0 || end < start || end > raw.len) {
        PyErr_SetString(PyExc_ValueError, "start and end must lie within the buffer");
        goto done;
    }
    b = (const unsigned char *)raw.buf;
    mask = (const char *)maskb.buf;
    mask_len = maskb.len;

    kinds_obj = PyObject_GetAttrString(plan, "batch_kinds");
    if (kinds_obj == NULL)
        goto done;
    kinds_seq = PySequence_Fast(kinds_obj, "batch_kinds must be a sequence");
    if (kinds_seq == NULL)
        goto done;
    ncols = PySequence_Fast_GET_SIZE(kinds_seq);
    kinds = PyMem_Malloc(sizeof(long) * (size_t)(ncols ? ncols : 1));
    if (kinds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < ncols; i++) {
        kinds[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(kinds_seq, i));
        if (kinds[i] == -1 && PyErr_Occurred())
            goto done;
    }

    pos = run = start;
    mk = -1; /* the first mark at or after where the walk looked last (end: none left) */
    while (end - pos >= 5) {
        int32_t n = be32(b + pos + 1);
        Py_ssize_t nxt, p, hi = -1, count;
        int64_t delta = 0;
        if (b[pos] != 'D' || n < 4 || (Py_ssize_t)n > end - pos - 1)
            break; /* the caller reads what ends the run */
        nxt = pos + 1 + n;
        rows++;
        if (mk < pos)
            mk = next_mark(b, pos, end);
        if (mk >= nxt) {
            pos = nxt; /* no mark in this row */
            continue;
        }
        count = n >= 6 ? (Py_ssize_t)(int16_t)(((unsigned)b[pos + 5] << 8) | b[pos + 6]) : 0;
        if (n < 6 || count > ncols) {
            /* no column count, or more values than columns: the per-row code reads it */
            PyObject *body, *nw;
            if (rewrite_m == NULL && (rewrite_m = PyObject_GetAttrString(plan, "rewrite")) == NULL)
                goto done;
            body = PyBytes_FromStringAndSize((const char *)b + pos + 5, nxt - pos - 5);
            if (body == NULL)
                goto done;
            nw = PyObject_CallOneArg(rewrite_m, body);
            Py_DECREF(body);
            if (nw == NULL) {
                callback_failed(perr, serr);
                goto done;
            }
            if (nw != Py_None) {
                if (out_put(&o, b + run, pos - run) < 0 || out_obj(&o, nw, NULL) < 0) {
                    Py_DECREF(nw);
                    goto done;
                }
                changed = 1;
                run = nxt;
            }
            Py_DECREF(nw);
            pos = nxt;
            continue;
        }
        p = pos + 7;
        for (i = 0; i < count; i++) {
            int32_t k;
            Py_ssize_t vs, ve, lenpos = 0;
            long kind;
            PyObject *nv = NULL;
            int only_at = 1, null = 0;
            if (nxt - p < 4) {
                /* a length past the row (email_rows_py reads it and fails it, or fails the read) */
                PyErr_SetString(perr, "bad DataRow");
                goto done;
            }
            k = be32(b + p);
            vs = p + 4;
            if (k < 0) {
                if (k != -1) {
                    PyErr_SetString(perr, "bad DataRow");
                    goto done;
                }
                p = vs;
                continue;
            }
            if ((Py_ssize_t)k > nxt - vs) {
                PyErr_SetString(perr, "bad DataRow");
                goto done;
            }
            ve = vs + k;
            p = ve;
            if (mk >= ve)
                continue; /* the usual value: no mark in it */
            if (mk < vs)
                mk = next_mark(b, vs, end);
            if (mk >= ve || !(kind = kinds[i]))
                continue;
            if (kind == FAST) {
                Py_ssize_t q;
                for (q = mk; q < ve; q++)
                    if (OTHER[b[q]]) {
                        only_at = 0;
                        break;
                    }
            }
            if (kind == FAST && only_at) {
                /* Every mark an "@": the addresses' spans, written as they are found. */
                Py_ssize_t a = mk, last = vs, c = vs, e, s;
                int64_t nk = k;
                int any = 0;
                while (a >= 0) {
                    e = at_domain(b, a, ve);
                    if (e >= 0) {
                        s = a;
                        while (s > vs && LOCAL[b[s - 1]])
                            s--;
                        if (s >= last && s != a) { /* else inside the previous match, or no local part */
                            last = e;
                            if (!any) {
                                any = 1;
                                if (hi < 0) {
                                    if (out_put(&o, b + run, pos - run) < 0 || out_reserve(&o, 5) < 0)
                                        goto done;
                                    hi = o.len;
                                    o.len += 5;
                                    run = pos + 5;
                                }
                                if (out_put(&o, b + run, vs - 4 - run) < 0 || out_reserve(&o, 4) < 0)
                                    goto done;
                                lenpos = o.len;
                                o.len += 4;
                            }
                            if (out_put(&o, b + c, s - c) < 0 || out_put(&o, mask, mask_len) < 0)
                                goto done;
                            c = e;
                            nk += mask_len - (e - s);
                            found++;
                        }
                    }
                    if (a + 1 >= ve)
                        break;
                    {
                        const unsigned char *nx = memchr(b + a + 1, '@', (size_t)(ve - a - 1));
                        a = nx == NULL ? -1 : (Py_ssize_t)(nx - b);
                    }
                }
                if (!any)
                    continue;
                if (nk > INT32_MAX || nk < INT32_MIN) {
                    PyErr_SetString(perr, "bad DataRow");
                    goto done;
                }
                put_be32(o.buf + lenpos, (uint32_t)(int32_t)nk);
                delta += nk - k;
                run = c;
                changed = 1;
                continue;
            }
            /* Any other value with a mark: the per-row code's own answer. */
            {
                PyObject *v, *ki, *r;
                Py_ssize_t nlen = 0;
                if (value_m == NULL && (value_m = PyObject_GetAttrString(plan, "value")) == NULL)
                    goto done;
                v = PyBytes_FromStringAndSize((const char *)b + vs, k);
                if (v == NULL)
                    goto done;
                ki = PyLong_FromLong(kind == FAST ? 4 : kind);
                if (ki == NULL) {
                    Py_DECREF(v);
                    goto done;
                }
                {
                    PyObject *idx = PyLong_FromSsize_t(i);
                    if (idx == NULL) {
                        Py_DECREF(v);
                        Py_DECREF(ki);
                        goto done;
                    }
                    r = PyObject_CallFunctionObjArgs(value_m, idx, ki, v, NULL);
                    Py_DECREF(idx);
                }
                Py_DECREF(ki);
                if (r == NULL) {
                    Py_DECREF(v);
                    callback_failed(perr, serr);
                    goto done;
                }
                if (r == Py_None) {
                    null = 1;
                    Py_DECREF(r);
                } else {
                    int same = PyObject_RichCompareBool(r, v, Py_EQ);
                    if (same < 0) {
                        Py_DECREF(v);
                        Py_DECREF(r);
                        callback_failed(perr, serr);
                        goto done;
                    }
                    if (same) {
                        Py_DECREF(v);
                        Py_DECREF(r);
                        continue;
                    }
                    nv = r;
                }
                Py_DECREF(v);
                if (hi < 0) {
                    if (out_put(&o, b + run, pos - run) < 0 || out_reserve(&o, 5) < 0) {
                        Py_XDECREF(nv);
                        goto done;
                    }
                    hi = o.len;
                    o.len += 5;
                    run = pos + 5;
                }
                if (out_put(&o, b + run, vs - 4 - run) < 0) {
                    Py_XDECREF(nv);
                    goto done;
                }
                if (null) {
                    if (out_put(&o, "\xff\xff\xff\xff", 4) < 0)
                        goto done;
                    delta -= k;
                } else {
                    Py_buffer nb;
                    if (PyObject_GetBuffer(nv, &nb, PyBUF_SIMPLE) < 0) {
                        Py_DECREF(nv);
                        goto done;
                    }
                    nlen = nb.len;
                    if (out_i32(&o, nlen, perr) < 0 || out_put(&o, nb.buf, nlen) < 0) {
                        PyBuffer_Release(&nb);
                        Py_DECREF(nv);
                        goto done;
                    }
                    PyBuffer_Release(&nb);
                    Py_DECREF(nv);
                    delta += nlen - k;
                }
                run = ve;
                changed = 1;
            }
        }
        if (hi >= 0) {
            int64_t nn = (int64_t)n + delta;
            if (nn > INT32_MAX || nn < INT32_MIN) {
                PyErr_SetString(perr, "bad DataRow");
                goto done;
            }
            o.buf[hi] = 'D';
            put_be32(o.buf + hi + 1, (uint32_t)(int32_t)nn);
        }
        pos = nxt;
    }

    if (found) {
        /* plan.patterns["email"] = plan.patterns.get("email", 0) + found, read after the callbacks */
        PyObject *patterns, *cur, *sum, *add;
        int r;
        patterns = PyObject_GetAttrString(plan, "patterns");
        if (patterns == NULL)
            goto done;
        cur = PyObject_CallMethod(patterns, "get", "si", "email", 0);
        if (cur == NULL) {
            Py_DECREF(patterns);
            goto done;
        }
        add = PyLong_FromLongLong(found);
        sum = add == NULL ? NULL : PyNumber_Add(cur, add);
        Py_XDECREF(add);
        Py_DECREF(cur);
        if (sum == NULL) {
            Py_DECREF(patterns);
            goto done;
        }
        r = PyObject_SetItem(patterns, EMAIL, sum);
        Py_DECREF(sum);
        Py_DECREF(patterns);
        if (r < 0)
            goto done;
    }
    if (!changed) {
        result = Py_BuildValue("(Onn)", Py_None, pos, rows);
    } else {
        PyObject *bytes;
        if (out_put(&o, b + run, pos - run) < 0)
            goto done;
        bytes = PyBytes_FromStringAndSize(o.buf, o.len);
        if (bytes == NULL)
            goto done;
        result = Py_BuildValue("(Nnn)", bytes, pos, rows);
    }
done:
    Py_XDECREF(kinds_obj);
    Py_XDECREF(kinds_seq);
    Py_XDECREF(value_m);
    Py_XDECREF(rewrite_m);
    PyMem_Free(kinds);
    if (have_mask)
        PyBuffer_Release(&maskb);
    if (have_raw)
        PyBuffer_Release(&raw);
    PyMem_Free(o.buf);
    return result;
}

/* For the tests: where "@" + DOMAIN_RE matches at b[at] (endpos lim) ends, or None; where the
 * run of LOCAL_RE characters before b[at] starts (not before lo). */
static PyObject *
test_at_domain(PyObject *self, PyObject *args)
{
    Py_buffer v;
    Py_ssize_t at, lim, e;
    if (!PyArg_ParseTuple(args, "y*nn", &v, &at, &lim))
        return NULL;
    if (at < 0 || lim > v.len || at >= lim || ((const unsigned char *)v.buf)[at] != '@') {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "at must be an @ before lim, lim within the bytes");
        return NULL;
    }
    e = at_domain((const unsigned char *)v.buf, at, lim);
    PyBuffer_Release(&v);
    if (e < 0)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(e);
}

static PyObject *
test_classes(PyObject *self, PyObject *unused)
{
    /* The byte classes, as bytes of 0/1 by byte value: marks, local-part, domain (ldh), alnum. */
    return Py_BuildValue("(y#y#y#y#)", (const char *)MARK, (Py_ssize_t)256, (const char *)LOCAL, (Py_ssize_t)256,
                         (const char *)LDH, (Py_ssize_t)256, (const char *)ALNUM, (Py_ssize_t)256);
}

/* hoopy/postgres/replyrun.py's scan_py in C: from buf[pos], skip the whole DataRows (and
 * RowDescriptions if also_t); return (where it stopped, the DataRows skipped, the type byte of
 * the whole message there or -1, where that message ends). buf is bytes or a bytearray,
 * 0 <= pos <= end <= len(buf) (else TypeError/ValueError); only headers inside [pos, end) are
 * read, and a message is whole only if its declared length (>= 4) ends at or before end. */
static PyObject *
scan_reply(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *b;
    Py_ssize_t len, pos, end, rows = 0;
    int also_t;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan_reply(buf, pos, end, also_t)");
        return NULL;
    }
    if (PyBytes_CheckExact(args[0])) {
        b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        len = PyBytes_GET_SIZE(args[0]);
    } else if (PyByteArray_CheckExact(args[0])) {
        b = (const unsigned char *)PyByteArray_AS_STRING(args[0]);
        len = PyByteArray_GET_SIZE(args[0]);
    } else {
        PyErr_SetString(PyExc_TypeError, "scan_reply: bytes or bytearray");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    also_t = PyObject_IsTrue(args[3]);
    if (also_t < 0)
        return NULL;
    if (pos < 0 || pos > end || end > len) {
        PyErr_SetString(PyExc_ValueError, "scan_reply: bounds");
        return NULL;
    }
    while (end - pos >= 5) {
        unsigned char t = b[pos];
        int32_t n = be32(b + pos + 1);
        if (n < 4 || (Py_ssize_t)n > end - pos - 1)
            break;
        if (t == 'D')
            rows++;
        else if (t != 'T' || !also_t)
            return Py_BuildValue("(nnin)", pos, rows, (int)t, pos + 1 + (Py_ssize_t)n);
        pos += 1 + (Py_ssize_t)n;
    }
    return Py_BuildValue("(nnin)", pos, rows, -1, pos);
}

static PyMethodDef methods[] = {
    {"scan_reply", (PyCFunction)(void (*)(void))scan_reply, METH_FASTCALL,
     "replyrun.scan_py: (stop, DataRows skipped, type of the whole message at stop or -1, its end)"},
    {"email_rows", (PyCFunction)(void (*)(void))email_rows, METH_FASTCALL,
     "email_rows(plan, raw, start, end, mask, ProtocolError, struct.error): rowbatch.email_rows_py in C"},
    {"_at_domain", test_at_domain, METH_VARARGS, "the domain matcher alone (tests)"},
    {"_classes", test_classes, METH_NOARGS, "the byte classes (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowmask", "rowbatch.email_rows in C (optional; the Python code is the reference)",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__rowmask(void)
{
    PyObject *m;
    init_tables();
    if (EMAIL == NULL && (EMAIL = PyUnicode_InternFromString("email")) == NULL)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "DOMAIN", DOMAIN_RE) < 0 || PyModule_AddStringConstant(m, "LOCAL", LOCAL_RE) < 0
        || PyModule_AddStringConstant(m, "SOURCE", ROWMASK_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
