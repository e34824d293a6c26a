/*
 * bulksend.sources._split: a block of CSV lines into columns, exactly as csv.reader reads it.
 *
 * split(block, delimiter, width, wanted, limit) reads a block of whole lines (the decoded text;
 * the last line may lack its line end) with the dialect bulksend sniffs: the delimiter, the
 * quote character '"', doubled quotes inside quotes, no escape character, no initial spaces
 * skipped, not strict. It gives the values of the fields ``wanted`` (indexes of a record's
 * ``width`` fields) of every record, or None when the block is not one it can prove csv.reader
 * reads the same way; bulksend.sources.delimited then reads that block its other ways.
 *
 * What it reads (everything else is None):
 *   - records of exactly ``width`` fields, each ended by LF, CRLF, a lone CR or the block's end;
 *   - a field with no quote in it, read as it is;
 *   - a field that starts with a quote and whose closing quote is followed by the delimiter, a
 *     line end or the block's end: what is between, each "" read as one quote; delimiters, CRs
 *     and LFs inside are part of the value (the record then spans lines: csv.reader gives it
 *     the line number of its first line, as ``starts`` does);
 *   - no field longer than ``limit`` characters (csv.field_size_limit(): csv.reader raises).
 * Not read: a line with no character (csv.reader gives [] for it), a quote inside a field not
 * quoted from its start, anything after a closing quote but a delimiter or a line end, a quote
 * not closed within the block, a delimiter that is a quote, CR, LF or above U+00FF.
 *
 * Why it gives what csv.reader gives: csv.reader (Modules/_csv.c) takes the lines one by one
 * as open(newline="") splits them (LF, CRLF and a lone CR end a line) and runs each character
 * through a state machine. On the records above its states are only these: at a record's
 * start, a quote begins a quoted field and any other character but a line end an unquoted
 * one; in an unquoted field the delimiter ends the field, CR or LF the record, and every other
 * character is kept; in a quoted field every character is kept (the line ends too) but the
 * quote, which either is doubled (one quote kept) or closes the field, followed by the
 * delimiter (the next field starts) or a line end (the record ends). Those are the branches
 * this scanner takes; every input that would take csv.reader into another branch, or into an
 * error, makes it return None.
 *
 * Plain C99 and the CPython C API.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE __attribute__((always_inline)) inline
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define ALWAYS_INLINE inline
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

#define QUOTE '"'
#define FIRST_CAPACITY 1024

/* The parse's answers: the block was read, it is not one this module reads, or an exception */
#define READ 1
#define DECLINED 0
#define FAILED (-1)

/* One wanted column's values, in order; the references are owned until handed to a list */
typedef struct {
    PyObject **items;
    Py_ssize_t len;
    Py_ssize_t cap;
} Column;

typedef struct {
    /* the block */
    const void *data;
    Py_ssize_t n;
    int ascii; /* every character below 128: a field's characters are copied as they are */
    /* the dialect and what to keep */
    Py_UCS4 delimiter;
    Py_ssize_t width;
    Py_ssize_t limit;
    Py_ssize_t *slot; /* per field index, the column it goes to, or -1 */
    Column *columns;
    Py_ssize_t ncolumns;
    unsigned char stop[256];  /* ends an unquoted field: the delimiter, quote, CR, LF */
    unsigned char qstop[256]; /* stops the scan of a quoted field: quote, CR, LF */
    /* what was read */
    Py_ssize_t records;
    Py_ssize_t lines;
    Py_ssize_t *starts; /* the line (from 0) each record starts on */
    Py_ssize_t starts_cap;
    Py_UCS4 *scratch; /* a field with doubled quotes, undoubled */
    Py_ssize_t scratch_cap;
} Split;

static int
grow(void **items, Py_ssize_t *cap, Py_ssize_t len, size_t size)
{
    if (len < *cap) {
        return 0;
    }
    Py_ssize_t wanted = *cap ? *cap * 2 : FIRST_CAPACITY;
    void *bigger = PyMem_Realloc(*items, (size_t)wanted * size);
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *items = bigger;
    *cap = wanted;
    return 0;
}

/* The characters start..end of the block (no doubled quote among them) as a new str */
static PyObject *
field_as_is(Split *s, int kind, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t len = end - start;
    if (s->ascii) {
        PyObject *value = PyUnicode_New(len, 127);
        if (value != NULL && len) {
            memcpy(PyUnicode_DATA(value), (const char *)s->data + start, (size_t)len);
        }
        return value;
    }
    return PyUnicode_FromKindAndData(kind, (const char *)s->data + start * kind, len);
}

/* The characters start..end of the block with each "" read as one quote, as a new str */
static PyObject *
field_undoubled(Split *s, int kind, Py_ssize_t start, Py_ssize_t end, Py_ssize_t doubled)
{
    Py_ssize_t len = end - start - doubled;
    if (len > s->scratch_cap) {
        Py_UCS4 *bigger = PyMem_Realloc(s->scratch, (size_t)len * sizeof(Py_UCS4));
        if (bigger == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        s->scratch = bigger;
        s->scratch_cap = len;
    }
    Py_ssize_t out = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, s->data, i);
        s->scratch[out++] = c;
        if (c == QUOTE) {
            i++; /* the second quote of the pair */
        }
    }
    return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s->scratch, out);
}

static ALWAYS_INLINE int
keep(Split *s, Py_ssize_t field, PyObject *value)
{
    if (value == NULL) {
        return FAILED;
    }
    Column *column = &s->columns[s->slot[field]];
    if (grow((void **)&column->items, &column->cap, column->len, sizeof(PyObject *)) < 0) {
        Py_DECREF(value);
        return FAILED;
    }
    column->items[column->len++] = value;
    return READ;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && \
    (defined(__GNUC__) || defined(__clang__))
#define WORDS 1
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
/* The high bit of each byte of x that is 0 (and maybe of bytes above the lowest such byte:
 * the lowest bit set is always a 0 byte's, which is all that is used) */
#define ZERO_BYTES(x) (((x) - ONES) & ~(x) & HIGHS)
#endif

/* The first i from ``i`` on (or n) where a character of a 1-byte block is in ``table``, which
 * holds a, b, c and d and nothing else: eight characters at a time where it can. */
static ALWAYS_INLINE Py_ssize_t
scan_ucs1(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, const unsigned char *table,
          unsigned char a, unsigned char b, unsigned char c, unsigned char d)
{
#ifdef WORDS
    const uint64_t wa = a * ONES, wb = b * ONES, wc = c * ONES, wd = d * ONES;
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t found = ZERO_BYTES(w ^ wa) | ZERO_BYTES(w ^ wb) | ZERO_BYTES(w ^ wc) |
                         ZERO_BYTES(w ^ wd);
        if (found) {
            return i + (__builtin_ctzll(found) >> 3);
        }
        i += 8;
    }
#else
    (void)a, (void)b, (void)c, (void)d;
#endif
    while (i < n && !table[p[i]]) {
        i++;
    }
    return i;
}

/* Reads the whole block into s; READ, DECLINED or FAILED. ``kind`` is a constant in each
 * caller below, so the compiler makes one loop per character width. */
static ALWAYS_INLINE int
parse(Split *s, const int kind)
{
    const void *data = s->data;
    const Py_ssize_t n = s->n;
    const Py_UCS4 delimiter = s->delimiter;
    const unsigned char *stop = s->stop;
    const unsigned char *qstop = s->qstop;
    Py_ssize_t i = 0;
    Py_ssize_t lines = 0;
    Py_UCS4 c;
#define AT(j) PyUnicode_READ(kind, data, (j))
#define IS(table, ch) ((kind == PyUnicode_1BYTE_KIND || (ch) < 256) && (table)[(ch)])
    while (i < n) {
        c = AT(i);
        if (c == '\n' || c == '\r') {
            return DECLINED; /* a line with no character: csv.reader gives [] */
        }
        if (grow((void **)&s->starts, &s->starts_cap, s->records, sizeof(Py_ssize_t)) < 0) {
            return FAILED;
        }
        s->starts[s->records] = lines;
        Py_ssize_t field = 0;
        for (;;) { /* the fields of one record */
            if (field == s->width) {
                return DECLINED; /* more fields than the header */
            }
            Py_ssize_t start, end, doubled = 0;
            if (i < n && AT(i) == QUOTE) {
                start = ++i;
                for (;;) {
                    if (kind == PyUnicode_1BYTE_KIND) {
                        i = scan_ucs1(data, i, n, qstop, QUOTE, '\r', '\n', QUOTE);
                    }
                    else {
                        while (i < n && !IS(qstop, AT(i))) {
                            i++;
                        }
                    }
                    if (i == n) {
                        return DECLINED; /* not closed in this block */
                    }
                    c = AT(i);
                    if (c == QUOTE) {
                        if (i + 1 < n && AT(i + 1) == QUOTE) {
                            doubled++;
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i++; /* a line end inside the quotes: CRLF counts once, at its LF */
                    if (c == '\n' || i == n || AT(i) != '\n') {
                        lines++;
                    }
                }
                end = i++;
                if (i < n) {
                    c = AT(i);
                    if (c != delimiter && c != '\n' && c != '\r') {
                        return DECLINED; /* csv.reader would keep it, and the quote too */
                    }
                }
            }
            else {
                start = i;
                if (kind == PyUnicode_1BYTE_KIND) {
                    i = scan_ucs1(data, i, n, stop, QUOTE, '\r', '\n', (unsigned char)delimiter);
                }
                else {
                    while (i < n && !IS(stop, AT(i))) {
                        i++;
                    }
                }
                end = i;
                if (i < n && AT(i) == QUOTE) {
                    return DECLINED; /* a quote inside an unquoted field */
                }
            }
            if (UNLIKELY(end - start - doubled > s->limit)) {
                return DECLINED; /* csv.reader: "field larger than field limit" */
            }
            if (s->slot[field] >= 0) {
                PyObject *value = doubled ? field_undoubled(s, kind, start, end, doubled)
                                          : field_as_is(s, kind, start, end);
                if (keep(s, field, value) < 0) {
                    return FAILED;
                }
            }
            field++;
            if (i < n && AT(i) == delimiter) {
                i++;
                continue;
            }
            break; /* a line end, or the end of the block */
        }
        if (field != s->width) {
            return DECLINED; /* fewer fields than the header */
        }
        if (i < n) { /* CR, LF or CRLF */
            if (AT(i) == '\r' && i + 1 < n && AT(i + 1) == '\n') {
                i++;
            }
            i++;
        }
        lines++;
        s->records++;
    }
#undef AT
#undef IS
    s->lines = lines;
    return READ;
}

static int
parse_ucs1(Split *s)
{
    return parse(s, PyUnicode_1BYTE_KIND);
}

static int
parse_ucs2(Split *s)
{
    return parse(s, PyUnicode_2BYTE_KIND);
}

static int
parse_ucs4(Split *s)
{
    return parse(s, PyUnicode_4BYTE_KIND);
}

/* -- the function ---------------------------------------------------------------------------- */

static void
split_free(Split *s)
{
    if (s->columns != NULL) {
        for (Py_ssize_t k = 0; k < s->ncolumns; k++) {
            Column *column = &s->columns[k];
            for (Py_ssize_t j = 0; j < column->len; j++) {
                Py_DECREF(column->items[j]);
            }
            PyMem_Free(column->items);
        }
        PyMem_Free(s->columns);
    }
    PyMem_Free(s->slot);
    PyMem_Free(s->starts);
    PyMem_Free(s->scratch);
}

/* Sets up s from the arguments; 0, or -1 with an exception */
static int
split_init(Split *s, PyObject *const *args)
{
    PyObject *block = args[0], *delimiter = args[1], *wanted = args[3];
    if (!PyUnicode_Check(block) || !PyUnicode_Check(delimiter)) {
        PyErr_SetString(PyExc_TypeError, "split: block and delimiter must be str");
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(block) < 0 || PyUnicode_READY(delimiter) < 0) {
        return -1;
    }
#endif
    if (PyUnicode_GET_LENGTH(delimiter) != 1) {
        PyErr_SetString(PyExc_ValueError, "split: the delimiter must be one character");
        return -1;
    }
    s->delimiter = PyUnicode_READ_CHAR(delimiter, 0);
    s->width = PyLong_AsSsize_t(args[2]);
    if (s->width == -1 && PyErr_Occurred()) {
        return -1;
    }
    s->limit = PyLong_AsSsize_t(args[4]);
    if (s->limit == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (s->width < 1 || s->limit < 0) {
        PyErr_SetString(PyExc_ValueError, "split: width must be at least 1, limit not negative");
        return -1;
    }
    s->data = PyUnicode_DATA(block);
    s->n = PyUnicode_GET_LENGTH(block);
    s->ascii = PyUnicode_IS_ASCII(block);
    s->slot = PyMem_Malloc((size_t)s->width * sizeof(Py_ssize_t));
    if (s->slot == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < s->width; k++) {
        s->slot[k] = -1;
    }
    PyObject *fast = PySequence_Fast(wanted, "split: wanted must be a sequence of ints");
    if (fast == NULL) {
        return -1;
    }
    s->ncolumns = PySequence_Fast_GET_SIZE(fast);
    s->columns = PyMem_Calloc((size_t)s->ncolumns + 1, sizeof(Column));
    if (s->columns == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < s->ncolumns; k++) {
        Py_ssize_t index = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(fast, k));
        if (index == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (index < 0 || index >= s->width || s->slot[index] >= 0) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "split: wanted holds each index below width once");
            return -1;
        }
        s->slot[index] = k;
    }
    Py_DECREF(fast);
    const char *stops = "\"\r\n";
    for (const char *p = stops; *p; p++) {
        s->stop[(unsigned char)*p] = 1;
        s->qstop[(unsigned char)*p] = 1;
    }
    if (s->delimiter < 256) {
        s->stop[s->delimiter] = 1;
    }
    return 0;
}

/* (columns, records, lines, starts) from a parse that read the block */
static PyObject *
split_result(Split *s)
{
    PyObject *columns = PyList_New(s->ncolumns);
    if (columns == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < s->ncolumns; k++) {
        Column *column = &s->columns[k];
        PyObject *values = PyList_New(column->len);
        if (values == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < column->len; j++) {
            PyList_SET_ITEM(values, j, column->items[j]); /* the reference goes to the list */
        }
        column->len = 0;
        PyList_SET_ITEM(columns, k, values);
    }
    PyObject *starts;
    if (s->lines == s->records) {
        starts = Py_NewRef(Py_None); /* every record on its own line */
    }
    else {
        starts = PyList_New(s->records);
        if (starts == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        for (Py_ssize_t j = 0; j < s->records; j++) {
            PyObject *line = PyLong_FromSsize_t(s->starts[j]);
            if (line == NULL) {
                Py_DECREF(starts);
                Py_DECREF(columns);
                return NULL;
            }
            PyList_SET_ITEM(starts, j, line);
        }
    }
    return Py_BuildValue("(NnnN)", columns, s->records, s->lines, starts);
}

PyDoc_STRVAR(split_doc,
             "split(block, delimiter, width, wanted, limit, /)\n"
             "--\n\n"
             "The block's records, read as csv.reader reads them, column by column:\n"
             "(columns, records, lines, starts) where columns[k] holds field wanted[k] of\n"
             "every record, lines counts the block's lines, and starts is None when every\n"
             "record is one line, else the line (from 0) each record starts on. None when\n"
             "the block is not one this function reads (see the module).");

static PyObject *
split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "split takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    Split s;
    memset(&s, 0, sizeof s);
    PyObject *result = NULL;
    if (split_init(&s, args) < 0) {
        goto done;
    }
    if (s.n == 0 || s.delimiter == QUOTE || s.delimiter == '\r' || s.delimiter == '\n' ||
        s.delimiter > 255) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    int kind = PyUnicode_KIND(args[0]);
    int got = kind == PyUnicode_1BYTE_KIND   ? parse_ucs1(&s)
              : kind == PyUnicode_2BYTE_KIND ? parse_ucs2(&s)
                                             : parse_ucs4(&s);
    if (got == READ) {
        result = split_result(&s);
    }
    else if (got == DECLINED) {
        result = Py_NewRef(Py_None);
    }
done:
    split_free(&s);
    return result;
}

static PyMethodDef module_methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL, split_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "A block of CSV lines into columns, exactly as csv.reader reads it, or None\n"
             "(optional: without it bulksend.sources.delimited splits blocks with str\n"
             "methods and csv.reader). What it reads and why it is exact: the C source.");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bulksend.sources._split",
    .m_doc = module_doc,
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__split(void)
{
    return PyModuleDef_Init(&module_def);
}
