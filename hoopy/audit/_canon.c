/* The audit events' two encodings in C (optional; hoopy/audit/chain.py is the reference and the
 * fallback, HOOPY_CANON=python turns this off):
 *
 *   dumps(obj)                 -> str | None   canonical_json's bytes: the standard library's
 *       json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False) for exact
 *       dicts with str keys, lists, tuples, str, int, float, bool and None. None (not an
 *       exception) for anything else (a subclass, a non-str key, a lone surrogate, 64 levels
 *       deep, a cycle): the caller then takes the standard library, which decides as before.
 *   ascii(*texts)              -> bool         every argument None or an exact ASCII str
 *   link(prefix, prev, values) -> str | None   sha256(prefix + prev + "\n" + A(values)).hexdigest()
 *       with A the chain's frozen array encoding (chain.py's docstring) of exact int, str and None;
 *       None for any other value or a lone surrogate (the Python path then refuses it as before).
 *
 * Strings are escaped the one way both encodings share: '"', '\\', \b \f \n \r \t short, the other
 * characters below U+0020 as \u00XX (lower-case hex), everything else itself, in UTF-8.
 * Floats are float.__repr__ (PyOS_double_to_string 'r', as the json module), NaN and the infinities
 * as the json module writes them. Everything runs with the GIL held: one reused digest context.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>

#ifndef CANON_SOURCE
#define CANON_SOURCE ""
#endif

#define MAX_DEPTH 64

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    int ascii;
    char stack[1024];
} buf_t;

static void buf_init(buf_t *b) { b->p = b->stack; b->len = 0; b->cap = sizeof b->stack; b->ascii = 1; }
static void buf_free(buf_t *b) { if (b->p != b->stack) PyMem_Free(b->p); }

static int buf_grow(buf_t *b, Py_ssize_t need)
{
    Py_ssize_t cap = b->cap;
    while (cap - b->len < need) {
        if (cap > PY_SSIZE_T_MAX / 2) { PyErr_NoMemory(); return -1; }
        cap *= 2;
    }
    char *n;
    if (b->p == b->stack) {
        n = PyMem_Malloc(cap);
        if (n) memcpy(n, b->p, b->len);
    } else {
        n = PyMem_Realloc(b->p, cap);
    }
    if (!n) { PyErr_NoMemory(); return -1; }
    b->p = n;
    b->cap = cap;
    return 0;
}

#define RESERVE(b, n) (((b)->cap - (b)->len >= (n)) ? 0 : buf_grow((b), (n)))

static int put(buf_t *b, const char *s, Py_ssize_t n)
{
    if (RESERVE(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int putc1(buf_t *b, char c)
{
    if (RESERVE(b, 1) < 0) return -1;
    b->p[b->len++] = c;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* 0: itself; otherwise the escape's second character ('u': \u00XX). */
static unsigned char ESC[256];

static void init_esc(void)
{
    for (int i = 0; i < 0x20; i++) ESC[i] = 'u';
    ESC['"'] = '"';
    ESC['\\'] = '\\';
    ESC['\b'] = 'b';
    ESC['\f'] = 'f';
    ESC['\n'] = 'n';
    ESC['\r'] = 'r';
    ESC['\t'] = 't';
}

/* 0 written, 1 not ours (a lone surrogate), -1 error. */
static int put_str(buf_t *b, PyObject *s)
{
    Py_ssize_t n;
    const char *u;
    if (PyUnicode_IS_ASCII(s)) {
        u = (const char *)PyUnicode_DATA(s);
        n = PyUnicode_GET_LENGTH(s);
    } else {
        u = PyUnicode_AsUTF8AndSize(s, &n);
        if (u == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) { PyErr_Clear(); return 1; }
            return -1;
        }
        b->ascii = 0;
    }
    /* Worst case every byte is \u00XX. */
    if (n > (PY_SSIZE_T_MAX - 2) / 6) { PyErr_NoMemory(); return -1; }
    if (RESERVE(b, 6 * n + 2) < 0) return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        unsigned char e = ESC[c];
        if (!e) continue;
        memcpy(o, u + start, i - start);
        o += i - start;
        start = i + 1;
        *o++ = '\\';
        if (e == 'u') {
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = HEX[c >> 4]; *o++ = HEX[c & 15];
        } else {
            *o++ = (char)e;
        }
    }
    memcpy(o, u + start, n - start);
    o += n - start;
    *o++ = '"';
    b->len = o - b->p;
    return 0;
}

static int put_int(buf_t *b, PyObject *v)
{
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (!overflow) {
        char tmp[24];
        char *e = tmp + sizeof tmp, *q = e;
        unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
        do { *--q = (char)('0' + u % 10); u /= 10; } while (u);
        if (x < 0) *--q = '-';
        return put(b, q, e - q);
    }
    PyObject *s = PyLong_Type.tp_repr(v); /* what int.__repr__ writes, as the json module */
    if (s == NULL) return -1;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    int r = u ? put(b, u, n) : -1;
    Py_DECREF(s);
    return r;
}

static int put_float(buf_t *b, PyObject *v)
{
    double d = PyFloat_AS_DOUBLE(v);
    if (Py_IS_NAN(d)) return put(b, "NaN", 3);
    if (Py_IS_INFINITY(d)) return d > 0 ? put(b, "Infinity", 8) : put(b, "-Infinity", 9);
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL); /* float.__repr__ */
    if (s == NULL) return -1;
    int r = put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return r;
}

static int put_value(buf_t *b, PyObject *o, int depth);

static int put_dict(buf_t *b, PyObject *o, int depth)
{
    if (PyDict_GET_SIZE(o) == 0) return put(b, "{}", 2);
    PyObject *keys = PyDict_Keys(o);
    if (keys == NULL) return -1;
    int r = 0;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(keys, i))) { r = 1; goto done; }
    }
    if (n > 1 && PyList_Sort(keys) < 0) { r = -1; goto done; }  /* code point order, as sorted() */
    if ((r = putc1(b, '{')) != 0) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        if (i && (r = putc1(b, ',')) != 0) goto done;
        if ((r = put_str(b, k)) != 0) goto done;
        if ((r = putc1(b, ':')) != 0) goto done;
        PyObject *v = PyDict_GetItemWithError(o, k); /* borrowed */
        if (v == NULL) { r = PyErr_Occurred() ? -1 : 1; goto done; }
        Py_INCREF(v);
        r = put_value(b, v, depth + 1);
        Py_DECREF(v);
        if (r) goto done;
    }
    r = putc1(b, '}');
done:
    Py_DECREF(keys);
    return r;
}

static int put_seq(buf_t *b, PyObject *o, int depth)
{
    PyObject *fast = PySequence_Fast(o, "");  /* a list or a tuple: itself */
    if (fast == NULL) return -1;
    int r;
    if ((r = putc1(b, '[')) != 0) goto done;
    /* Python code can run in here: put_dict's PyDict_Keys allocates a list, which may start the
     * garbage collector, and a finalizer (__del__, a weakref callback) may then change this list.
     * So its length is read again at each item and the item held while it is written (as the
     * json module does), never a length or an item read before. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        if (i && (r = putc1(b, ',')) != 0) goto done;
        PyObject *v = PySequence_Fast_GET_ITEM(fast, i);
        Py_INCREF(v);
        r = put_value(b, v, depth + 1);
        Py_DECREF(v);
        if (r) goto done;
    }
    r = putc1(b, ']');
done:
    Py_DECREF(fast);
    return r;
}

static int put_value(buf_t *b, PyObject *o, int depth)
{
    if (depth > MAX_DEPTH) return 1;
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type) return put_str(b, o);
    if (o == Py_None) return put(b, "null", 4);
    if (o == Py_True) return put(b, "true", 4);
    if (o == Py_False) return put(b, "false", 5);
    if (t == &PyLong_Type) return put_int(b, o);
    if (t == &PyFloat_Type) return put_float(b, o);
    if (t == &PyDict_Type) return put_dict(b, o, depth);
    if (t == &PyList_Type || t == &PyTuple_Type) return put_seq(b, o, depth);
    return 1;
}

static PyObject *finish_str(buf_t *b)
{
    if (b->ascii) {
        PyObject *s = PyUnicode_New(b->len, 127);
        if (s) memcpy(PyUnicode_DATA(s), b->p, b->len);
        return s;
    }
    return PyUnicode_DecodeUTF8(b->p, b->len, "strict");
}

static PyObject *canon_dumps(PyObject *self, PyObject *obj)
{
    buf_t b;
    buf_init(&b);
    int r = put_value(&b, obj, 0);
    PyObject *out = NULL;
    if (r == 0) out = finish_str(&b);
    else if (r == 1) out = Py_NewRef(Py_None);
    buf_free(&b);
    return out;
}

static EVP_MD *SHA256_MD;
static EVP_MD_CTX *CTX;

static PyObject *canon_link(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "link(prefix: bytes, prev: str, values)");
        return NULL;
    }
    PyObject *prefix = args[0], *prev = args[1], *values = args[2];
    if (!PyBytes_CheckExact(prefix)) {
        PyErr_SetString(PyExc_TypeError, "link: prefix must be bytes");
        return NULL;
    }
    if (!PyUnicode_CheckExact(prev) || !PyUnicode_IS_ASCII(prev)
        || !(PyList_CheckExact(values) || PyTuple_CheckExact(values)))
        Py_RETURN_NONE;
    buf_t b;
    buf_init(&b);
    PyObject *out = NULL;
    int r = put(&b, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix));
    if (!r) r = put(&b, (const char *)PyUnicode_DATA(prev), PyUnicode_GET_LENGTH(prev));
    if (!r) r = put(&b, "\n[", 2);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    for (Py_ssize_t i = 0; !r && i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        if (i) r = putc1(&b, ',');
        if (r) break;
        PyTypeObject *t = Py_TYPE(v);
        if (t == &PyUnicode_Type) r = put_str(&b, v);
        else if (v == Py_None) r = put(&b, "null", 4);
        else if (t == &PyLong_Type) r = put_int(&b, v);
        else r = 1;  /* the Python path refuses it (or writes a subclass as it always did) */
    }
    if (!r) r = putc1(&b, ']');
    if (r == 1) {
        out = Py_NewRef(Py_None);
    } else if (r == 0) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        if (!EVP_DigestInit_ex(CTX, SHA256_MD, NULL) || !EVP_DigestUpdate(CTX, b.p, (size_t)b.len)
            || !EVP_DigestFinal_ex(CTX, md, &mdlen) || mdlen != 32) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        } else {
            out = PyUnicode_New(64, 127);
            if (out) {
                char *h = (char *)PyUnicode_DATA(out);
                for (int i = 0; i < 32; i++) {
                    h[2 * i] = HEX[md[i] >> 4];
                    h[2 * i + 1] = HEX[md[i] & 15];
                }
            }
        }
    }
    buf_free(&b);
    return out;
}

/* True when every argument is None or an exact str of ASCII characters only (the common event:
 * nothing for the writer's _clean_text to change); False otherwise, and the Python code looks. */
static PyObject *canon_ascii(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *v = args[i];
        if (v == Py_None) continue;
        if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"ascii", (PyCFunction)(void (*)(void))canon_ascii, METH_FASTCALL,
     "True: every argument is None or an ASCII str"},
    {"dumps", (PyCFunction)canon_dumps, METH_O, "canonical_json's text, or None: take the Python path"},
    {"link", (PyCFunction)(void (*)(void))canon_link, METH_FASTCALL,
     "sha256(prefix + prev + '\\n' + A(values)).hexdigest(), or None: take the Python path"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_canon", NULL, -1, methods};

PyMODINIT_FUNC PyInit__canon(void)
{
    init_esc();
    if (SHA256_MD == NULL) {
        SHA256_MD = EVP_MD_fetch(NULL, "SHA256", NULL);
        CTX = EVP_MD_CTX_new();
        if (SHA256_MD == NULL || CTX == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddStringConstant(m, "SOURCE", CANON_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
