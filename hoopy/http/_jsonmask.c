/* The optional C accelerator of the JSON body masking (hoopy/http/masker.py) and of the email
 * detector (hoopy/policy/masking.py), built by setup.py with optional=True. Three functions,
 * each the twin of Python code that stays the reference and the fallback:
 *
 *   valid(data: bytes) -> bool
 *       True only when ``data`` is certainly a JSON text both orjson.loads or json.loads (the
 *       masker's _loads) parse: strict RFC 8259 grammar, strict UTF-8 (no surrogates, no
 *       overlong forms), no backslash anywhere (the masker's raw path takes only such bodies),
 *       nesting at most MAX_NEST, every number at most MAX_NUMBER bytes long. False means "not
 *       known": the caller parses as before, so a wrong False costs time, never sameness.
 *   email_spans(text: str) -> list[tuple[int, int]]
 *       masking._email_spans(text): the spans of every _EMAIL match, in order.
 *   email_redact(text: str, mask: str) -> tuple[str, int]
 *       masking._replace(text, spans) and len(spans) for those spans (text itself when none).
 *
 * The regexes reproduced (DOMAIN, LOCAL below) are compared with masking.py's at import
 * (masker.py and masking.py use this module only when they are the same), and
 * tests/test_http_jsonmask_c.py compares every function with its Python twin. */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef JSONMASK_SOURCE
#define JSONMASK_SOURCE ""
#endif

#define DOMAIN_RE "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
#define LOCAL_RE "[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]"
#define MAX_NEST 256
#define MAX_NUMBER 64

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
    }
}

/* ---- valid ------------------------------------------------------------------------------ */

/* The length of the strict UTF-8 sequence at p (p[0] >= 0x80), 0 when it is not one. */
static inline Py_ssize_t
utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p < 2 || (p[1] & 0xC0) != 0x80)
            return 0;
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        if (c == 0xED)
            hi = 0x9F; /* surrogates */
        if (end - p < 3 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        if (c == 0xF4)
            hi = 0x8F; /* past U+10FFFF */
        if (end - p < 4 || p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

static inline int
is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A string from p (at its opening quote); where it ends (after its closing quote), NULL: not known. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether a byte of x is a quote, a backslash, below 0x20 or past 0x7F (bit 7 of such bytes set,
 * possibly of others after the first one too: only zero or not zero is used). */
static inline uint64_t
special8(uint64_t x)
{
    uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\');
    return ((q - ONES) & ~q) | ((b - ONES) & ~b) | (x - ONES * 0x20) | x;
}

static const unsigned char *
scan_string(const unsigned char *p, const unsigned char *end)
{
    p++;
    while (p < end) {
        unsigned char c;
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (special8(x) & HIGHS)
                break;
            p += 8;
        }
        if (p >= end)
            break;
        c = *p;
        if (c == '"')
            return p + 1;
        if (c < 0x20 || c == '\\')
            return NULL;
        if (c < 0x80) {
            p++;
            continue;
        }
        {
            Py_ssize_t n = utf8_seq(p, end);
            if (n == 0)
                return NULL;
            p += n;
        }
    }
    return NULL;
}

/* A number from p; where it ends, NULL: not known. */
static const unsigned char *
scan_number(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *s = p;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return NULL;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9') {
        while (p < end && is_digit(*p))
            p++;
    } else
        return NULL;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p - s > MAX_NUMBER)
        return NULL; /* json.loads refuses an integer of more than 4,300 digits: not worth telling apart */
    return p;
}

static int
json_valid(const unsigned char *p, Py_ssize_t len)
{
    const unsigned char *end = p + len;
    char stack[MAX_NEST]; /* '{' or '[' of each open container */
    int depth = 0;
    /* state: 0 a value is expected, 1 a value just ended */
    for (;;) {
        /* expect a value */
        while (p < end && is_ws(*p))
            p++;
        if (p >= end)
            return 0;
        switch (*p) {
        case '{':
        case '[':
            if (depth >= MAX_NEST)
                return 0;
            stack[depth++] = (char)*p;
            p++;
            while (p < end && is_ws(*p))
                p++;
            if (p < end && *p == (stack[depth - 1] == '{' ? '}' : ']')) {
                p++;
                depth--;
                goto after_value;
            }
            if (stack[depth - 1] == '{')
                goto expect_key;
            continue;
        case '"':
            p = scan_string(p, end);
            if (p == NULL)
                return 0;
            goto after_value;
        case 't':
            if (end - p < 4 || memcmp(p, "true", 4) != 0)
                return 0;
            p += 4;
            goto after_value;
        case 'f':
            if (end - p < 5 || memcmp(p, "false", 5) != 0)
                return 0;
            p += 5;
            goto after_value;
        case 'n':
            if (end - p < 4 || memcmp(p, "null", 4) != 0)
                return 0;
            p += 4;
            goto after_value;
        default:
            p = scan_number(p, end);
            if (p == NULL)
                return 0;
            goto after_value;
        }
    expect_key:
        while (p < end && is_ws(*p))
            p++;
        if (p >= end || *p != '"')
            return 0;
        p = scan_string(p, end);
        if (p == NULL)
            return 0;
        while (p < end && is_ws(*p))
            p++;
        if (p >= end || *p != ':')
            return 0;
        p++;
        continue;
    after_value:
        for (;;) {
            while (p < end && is_ws(*p))
                p++;
            if (depth == 0)
                return p == end;
            if (p >= end)
                return 0;
            if (*p == ',') {
                p++;
                if (stack[depth - 1] == '{')
                    goto expect_key;
                break; /* the next value of the array */
            }
            if (*p == (stack[depth - 1] == '{' ? '}' : ']')) {
                p++;
                depth--;
                continue;
            }
            return 0;
        }
        continue;
    }
}

static PyObject *
valid(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    int r;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "valid() takes bytes");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = json_valid((const unsigned char *)b.buf, b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyBool_FromLong(r);
}

/* ---- email ------------------------------------------------------------------------------ */

/* A character of a str as a table index: every character past 0x7F is in no class. */
#define CLS(table, ch) ((ch) < 0x80 && (table)[(ch)])

/* Where "@" + DOMAIN_RE, matched by Python's re at text[at] (the text ends at lim), ends; -1: no
 * match. The first label must end where its run of [A-Za-z0-9-] ends (only "." may follow it),
 * so that run is at most 63 long and ends in a letter or digit; every later label takes the
 * longest of its choices (nothing after the greedy "+" can fail), at most 63 characters ending
 * in a letter or digit; the repetition stops at the first label not followed by "." and a
 * letter or digit. (hoopy/postgres/_rowmask.c's at_domain, on a str of any kind.) */
static Py_ssize_t
at_domain(int kind, const void *d, Py_ssize_t at, Py_ssize_t lim)
{
    Py_ssize_t p = at + 1, q, r, last, found = -1;
    Py_UCS4 ch;
    if (p >= lim || !CLS(ALNUM, PyUnicode_READ(kind, d, p)))
        return -1;
    q = p + 1;
    while (q < lim && q - p < 64 && (ch = PyUnicode_READ(kind, d, q), CLS(LDH, ch)))
        q++;
    if (q - p > 63 || !CLS(ALNUM, PyUnicode_READ(kind, d, q - 1)))
        return -1;
    while (q + 1 < lim && PyUnicode_READ(kind, d, q) == '.' && (ch = PyUnicode_READ(kind, d, q + 1), CLS(ALNUM, ch))) {
        p = q + 1;
        last = r = p + 1;
        while (r < lim && r - p < 63 && (ch = PyUnicode_READ(kind, d, r), CLS(LDH, ch))) {
            if (CLS(ALNUM, ch))
                last = r + 1;
            r++;
        }
        found = q = last;
    }
    return found;
}

static inline Py_ssize_t
find_at(int kind, const void *d, Py_ssize_t from, Py_ssize_t n)
{
    if (from >= n)
        return -1;
    if (kind == PyUnicode_1BYTE_KIND) {
        const char *s = (const char *)d;
        const char *f = memchr(s + from, '@', (size_t)(n - from));
        return f == NULL ? -1 : (Py_ssize_t)(f - s);
    }
    for (; from < n; from++)
        if (PyUnicode_READ(kind, d, from) == '@')
            return from;
    return -1;
}

/* The spans _email_spans finds, into a growing array of pairs; the count, -1 on no memory. */
static Py_ssize_t
spans_of(PyObject *text, Py_ssize_t **out)
{
    int kind = PyUnicode_KIND(text);
    const void *d = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), pos = 0, last = 0, count = 0, cap = 0, a, e, s;
    Py_ssize_t *sp = NULL;
    Py_UCS4 ch;
    while ((a = find_at(kind, d, pos, n)) >= 0) {
        e = at_domain(kind, d, a, n);
        if (e < 0) {
            pos = a + 1;
            continue;
        }
        pos = e; /* finditer goes on after the match, taken or not */
        s = a;
        while (s > 0 && (ch = PyUnicode_READ(kind, d, s - 1), CLS(LOCAL, ch)))
            s--;
        if (s < last || s == a)
            continue; /* inside the previous match, or no local part */
        last = e;
        if (count == cap) {
            Py_ssize_t *nsp;
            cap = cap ? cap * 2 : 64;
            nsp = PyMem_Realloc(sp, sizeof(Py_ssize_t) * 2 * (size_t)cap);
            if (nsp == NULL) {
                PyMem_Free(sp);
                PyErr_NoMemory();
                return -1;
            }
            sp = nsp;
        }
        sp[2 * count] = s;
        sp[2 * count + 1] = e;
        count++;
    }
    *out = sp;
    return count;
}

static PyObject *
email_spans(PyObject *self, PyObject *text)
{
    Py_ssize_t *sp = NULL, n, i;
    PyObject *list;
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "email_spans() takes a str");
        return NULL;
    }
    n = spans_of(text, &sp);
    if (n < 0)
        return NULL;
    list = PyList_New(n);
    if (list == NULL)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(nn)", sp[2 * i], sp[2 * i + 1]);
        if (t == NULL) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, t);
    }
done:
    PyMem_Free(sp);
    return list;
}

static PyObject *
email_redact(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *text, *mask, *res = NULL, *out = NULL;
    Py_ssize_t *sp = NULL, n, i, len, mlen, pos;
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "email_redact(text: str, mask: str)");
        return NULL;
    }
    text = args[0];
    mask = args[1];
    n = spans_of(text, &sp);
    if (n < 0)
        return NULL;
    if (n == 0) {
        res = Py_BuildValue("(On)", text, (Py_ssize_t)0);
        goto done;
    }
    len = PyUnicode_GET_LENGTH(text);
    mlen = PyUnicode_GET_LENGTH(mask);
    if (PyUnicode_IS_ASCII(text) && PyUnicode_IS_ASCII(mask)) {
        /* the usual body: written directly */
        Py_ssize_t size = len;
        char *w;
        const char *t = (const char *)PyUnicode_DATA(text), *m = (const char *)PyUnicode_DATA(mask);
        for (i = 0; i < n; i++)
            size += mlen - (sp[2 * i + 1] - sp[2 * i]);
        out = PyUnicode_New(size, 127);
        if (out == NULL)
            goto done;
        w = (char *)PyUnicode_DATA(out);
        pos = 0;
        for (i = 0; i < n; i++) {
            memcpy(w, t + pos, (size_t)(sp[2 * i] - pos));
            w += sp[2 * i] - pos;
            memcpy(w, m, (size_t)mlen);
            w += mlen;
            pos = sp[2 * i + 1];
        }
        memcpy(w, t + pos, (size_t)(len - pos));
    } else {
        /* any other kind: joined from its pieces, as _replace does (the result's kind is exact) */
        PyObject *parts = PyList_New(0), *piece, *empty;
        if (parts == NULL)
            goto done;
        pos = 0;
        for (i = 0; i <= n; i++) {
            Py_ssize_t s = i < n ? sp[2 * i] : len;
            piece = PyUnicode_Substring(text, pos, s);
            if (piece == NULL || PyList_Append(parts, piece) < 0 || (i < n && PyList_Append(parts, mask) < 0)) {
                Py_XDECREF(piece);
                Py_DECREF(parts);
                goto done;
            }
            Py_DECREF(piece);
            if (i < n)
                pos = sp[2 * i + 1];
        }
        empty = PyUnicode_New(0, 0);
        if (empty == NULL) {
            Py_DECREF(parts);
            goto done;
        }
        out = PyUnicode_Join(empty, parts);
        Py_DECREF(empty);
        Py_DECREF(parts);
        if (out == NULL)
            goto done;
    }
    res = Py_BuildValue("(Nn)", out, n);
done:
    PyMem_Free(sp);
    return res;
}

/* masked_key(text, mask) -> bool: whether re.search(re.escape(mask) + r'[^"]*"\s*:', text) finds a
 * match (mask holds no quote): for each run between two quotes that holds the mask, the quote that
 * ends it followed by whitespace and a colon. The regex reads the rest of a run again from every
 * mask in it (a string of 200,000 masked addresses took minutes); this reads each run once. */
static PyObject *
masked_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *text, *mask;
    Py_ssize_t n, ml, i, j, k;
    int kind;
    const void *d;
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "masked_key(text: str, mask: str)");
        return NULL;
    }
    text = args[0];
    mask = args[1];
    n = PyUnicode_GET_LENGTH(text);
    ml = PyUnicode_GET_LENGTH(mask);
    if (ml == 0 || PyUnicode_FindChar(mask, '"', 0, ml, 1) != -1) {
        PyErr_SetString(PyExc_ValueError, "the mask must be a non-empty text without a quote");
        return NULL;
    }
    kind = PyUnicode_KIND(text);
    d = PyUnicode_DATA(text);
    if (kind == PyUnicode_1BYTE_KIND && PyUnicode_IS_ASCII(mask)) {
        /* the usual body: memmem and memchr over the bytes (a call of PyUnicode_Find a mask cost more) */
        const char *t = (const char *)d, *m = (const char *)PyUnicode_DATA(mask), *f, *q;
        const char *end = t + n;
        f = memmem(t, (size_t)n, m, (size_t)ml);
        while (f != NULL) {
            q = memchr(f + ml, '"', (size_t)(end - (f + ml)));
            if (q == NULL)
                break;
            k = q - t + 1;
            while (k < n && Py_UNICODE_ISSPACE((Py_UCS1)t[k]))
                k++;
            if (k < n && t[k] == ':')
                Py_RETURN_TRUE;
            f = memmem(q + 1, (size_t)(end - (q + 1)), m, (size_t)ml);
        }
        Py_RETURN_FALSE;
    }
    i = PyUnicode_Find(text, mask, 0, n, 1);
    while (i >= 0) {
        j = PyUnicode_FindChar(text, '"', i + ml, n, 1);
        if (j < 0)
            break;
        if (j == -2)
            return NULL;
        k = j + 1;
        while (k < n && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, d, k)))
            k++;
        if (k < n && PyUnicode_READ(kind, d, k) == ':')
            Py_RETURN_TRUE;
        i = PyUnicode_Find(text, mask, j + 1, n, 1);
    }
    if (i == -2)
        return NULL;
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"masked_key", (PyCFunction)(void (*)(void))masked_key, METH_FASTCALL,
     "whether re.search(re.escape(mask) + r'[^\"]*\"\\s*:', text) matches, in linear time"},
    {"valid", valid, METH_O, "True when the bytes are certainly JSON the masker's _loads parses (no backslash)"},
    {"email_spans", email_spans, METH_O, "masking._email_spans in C"},
    {"email_redact", (PyCFunction)(void (*)(void))email_redact, METH_FASTCALL,
     "(text with every email span replaced by mask, how many)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonmask", "JSON validation and email spans in C (optional; the Python code is the reference)",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__jsonmask(void)
{
    PyObject *m;
    init_tables();
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "DOMAIN", DOMAIN_RE) < 0 || PyModule_AddStringConstant(m, "LOCAL", LOCAL_RE) < 0
        || PyModule_AddStringConstant(m, "SOURCE", JSONMASK_SOURCE) < 0
        || PyModule_AddIntConstant(m, "MAX_NEST", MAX_NEST) < 0 || PyModule_AddIntConstant(m, "MAX_NUMBER", MAX_NUMBER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
