/*
 * bulksend.dedup._keyset: the compiled table behind bulksend.dedup.keyset_c.KeySet.
 *
 * An exact set of (kind, str) keys: a table of 64-bit slots in RAM, the keys' bytes in an
 * append-only spill file (an unlinked temporary file whose descriptor the caller hands over).
 * The layout, the hash, growth, and the argument that the set is exact are written out in the
 * docstring of bulksend/dedup/keyset_c.py; comments marked EXACT below are the places that
 * argument rests on.
 *
 * Plain C99 and the CPython C API; POSIX pread/pwrite. Without a hash_fn the GIL is let go
 * while a batch is hashed and probed (run_batch): other threads run meanwhile (bulksend.dedup.ahead).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#error "bulksend.dedup._keyset needs POSIX pread/pwrite; the numpy key set is used instead"
#endif

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

/* A table sized for many keys is faulted in by a thread while a small one takes the first
 * keys (see "the early table" below): POSIX threads, GCC's atomics and anonymous maps. */
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE) && (defined(__GNUC__) || defined(__clang__))
#include <pthread.h>
#define HAVE_FILLER 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch((p), 1, 3)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PREFETCH(p) ((void)0)
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* -- layout --------------------------------------------------------------------------------- */

/* A slot is 0 (empty) or (fingerprint << OFF_BITS) | offset, where offset is the byte offset of
 * the key's record in the spill. Offset 0 is the file's header, never a record, so a used slot
 * is never 0 whatever its fingerprint. */
#define OFF_BITS 40
#define OFF_LIMIT (UINT64_C(1) << OFF_BITS)          /* 1 TiB of records */
#define OFF_MASK (OFF_LIMIT - 1)
#define FP_MASK ((UINT64_C(1) << (64 - OFF_BITS)) - 1) /* 24 bits: the low bits of the hash */
#define SPILL_START 8                                  /* the file's header: 8 zero bytes */

#define MIN_SLOTS 4096
#define MAX_SLOTS (UINT64_C(1) << 32) /* homes come from 32 bits of the hash */
#define BATCH 16384                   /* keys hashed, then probed, together */
#ifndef AHEAD
#define AHEAD 16 /* how many keys ahead the probe loop prefetches */
#endif
#define FLUSH_AT (1u << 20)           /* the write buffer is written out past this */
#define BUF_KEEP (4u << 20)           /* a buffer grown past this (a huge key) is shrunk */
#define READ_GAP 4096                 /* candidates this close are read with one pread */
#define READ_SPAN (64u << 10)         /* ... up to this many bytes in one pread */
#define SCAN_CHUNK (1u << 20)         /* the spill is read back in steps of this on growth */
#define FILE_STEP (UINT64_C(64) << 20) /* the file's blocks are reserved this much ahead */
#define HUGE_TABLE (UINT64_C(4) << 20) /* tables from this size are mapped (huge pages) */
#define EARLY_TABLE (UINT64_C(8) << 20) /* tables sized from this are faulted in by a thread */
#define FIRST_SLOTS (UINT64_C(1) << 18) /* ... while one of 2 MiB takes the first keys */
#define FILL_STEP (UINT64_C(2) << 20)   /* the thread faults this much in at a time */
#define HEADER_MAX 11                  /* kind byte + LEB128 of a 64-bit length */

/* Errors raised where the GIL may have been released (process() and what it calls run
 * without it when there is no hash_fn): take it to set the exception. PyGILState_Ensure is
 * also right when the thread holds the GIL already. */
#define WITH_GIL(stmt)                                \
    do {                                              \
        PyGILState_STATE gil_ = PyGILState_Ensure(); \
        stmt;                                         \
        PyGILState_Release(gil_);                     \
    } while (0)
#define ERRNO_WITH_GIL()                                            \
    do {                                                            \
        int errno_ = errno;                                         \
        WITH_GIL((errno = errno_, PyErr_SetFromErrno(PyExc_OSError))); \
    } while (0)

/* item states */
#define ST_PENDING 0
#define ST_NEW 1
#define ST_SEEN 2
#define ST_DEFERRED 3 /* matched fingerprints of older records: settled after reading them */
#define ST_FOUND 4    /* deferred, and one of those records was this key */

typedef struct {
    const char *p; /* the key's UTF-8 bytes (in the str itself, or in the arena) */
    size_t n;
    uint64_t h;
    uint64_t home;
    size_t arena; /* offset of the bytes in the arena, or (size_t)-1 */
    unsigned char *out; /* where the answer goes: 1 new, 0 seen (find_kinds: 1 found) */
    uint64_t *where;    /* find_kinds: where the stored record's offset goes (NULL: add) */
    uint64_t at;        /* the offset of the record found equal to the key */
    unsigned char kind;
    unsigned char state;
} Item;

typedef struct {
    uint64_t off;
    size_t item;
} Cand;

typedef struct {
    PyObject_HEAD
    PyObject *hash_fn; /* a callable str -> int, or NULL for the built-in hash */
    uint64_t k0, k1;   /* the built-in hash's keys */
    uint64_t *slots;
    uint64_t nslots;
    uint64_t limit; /* most keys the table may hold (load <= 3/4) */
    int mapped;     /* slots came from mmap (else calloc) */
    int broken;     /* a failed rebuild left the table incomplete */
    int busy;       /* adding keys (a hash_fn might call back in) */
    int lookup;     /* the call only looks keys up (find_kinds): nothing is stored */
    uint64_t count;
    uint64_t kinds[256];
    int fd;            /* -1 once closed */
    uint64_t file_end; /* bytes written to the file; records below are whole in it */
    uint64_t file_room; /* bytes reserved with fallocate */
    char *buf;          /* records from file_end on, not yet written */
    size_t buf_len, buf_cap;
    Item *items;
    size_t items_cap;
    char *arena; /* UTF-8 of the batch's non-ASCII keys */
    size_t arena_len, arena_cap;
    Cand *cands;
    size_t ncands, cands_cap;
    char *scratch; /* records read back */
    size_t scratch_cap;
    uint64_t reads;    /* preads made to confirm fingerprint matches */
    uint64_t rebuilds; /* times the table was rebuilt larger */
    /* the early table: the one sized for `expected`, faulted in by `filler` (NULL: none) */
    uint64_t *early;
    uint64_t early_n;
#ifdef HAVE_FILLER
    pthread_t filler;
    int filling; /* the filler was started and not joined yet */
    int filled;  /* set by the filler when it is done (atomic) */
    int stop;    /* asks the filler to stop (atomic) */
#endif
} KeySetObject;

/* -- the hash ------------------------------------------------------------------------------- */

#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)

static inline uint64_t
finalise(uint64_t z)
{
    /* a bijective mix of 64 bits (splitmix64's finaliser constants) */
    z ^= z >> 30;
    z *= UINT64_C(0xBF58476D1CE4E5B9);
    z ^= z >> 27;
    z *= UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return z;
}

static inline uint64_t
step(uint64_t h, uint64_t w, uint64_t k)
{
    /* for a fixed h, a bijection of the word w: xor, multiply by an odd key, fold the high half
     * down; keys that differ only in their last word never collide */
    h = (h ^ w) * k;
    return h ^ (h >> 32);
}

static inline uint64_t
load64(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8); /* one unaligned load */
    return w;
}

static inline uint64_t
load32(const char *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* The last n % 8 bytes of a key of n bytes (n % 8 != 0) as one zero-padded word, read without
 * touching a byte outside the key (a call to memcpy for a few bytes costs more than the hash).
 * For a given n, different bytes give different words. */
static inline uint64_t
tail_word(const char *p, size_t n)
{
    size_t rem = n & 7;
    const char *t = p + (n - rem);
#if PY_LITTLE_ENDIAN
    if (n >= 8) { /* the word ending with the key, its first (8 - rem) bytes shifted out */
        return load64(p + n - 8) >> (8 * (8 - rem));
    }
#endif
    if (rem >= 4) { /* two 4-byte loads, overlapping */
        return load32(t) | load32(t + rem - 4) << 32;
    }
    return (uint64_t)(unsigned char)t[0] | (uint64_t)(unsigned char)t[rem >> 1] << 8 |
           (uint64_t)(unsigned char)t[rem - 1] << 16;
}

static inline uint64_t
hash_bytes(const KeySetObject *s, unsigned kind, const char *p, size_t n)
{
    /* kind and length go into the start, so the tail's padding is unambiguous */
    uint64_t h = s->k0 ^ (((uint64_t)n << 8 | kind) * GOLDEN);
    const char *q = p, *end = p + (n & ~(size_t)7);
    for (; q < end; q += 8) {
        h = step(h, load64(q), s->k1);
    }
    if (n & 7) {
        h = step(h, tail_word(p, n), s->k1);
    }
    return finalise(h);
}

static inline uint64_t
home_of(const KeySetObject *s, uint64_t h)
{
    /* the high 32 bits scaled to the table (any size); the fingerprint is the low 24 bits */
    return ((h >> 32) * s->nslots) >> 32;
}

/* -- records -------------------------------------------------------------------------------- */

/* A record is the kind byte, the byte length as LEB128 (shortest form), then the bytes. The
 * header is self-delimiting, so equal header bytes mean equal kind and equal length. */
static inline size_t
put_header(unsigned char *dst, unsigned kind, uint64_t n)
{
    size_t i = 1;
    dst[0] = (unsigned char)kind;
    while (n >= 0x80) {
        dst[i++] = (unsigned char)(n | 0x80);
        n >>= 7;
    }
    dst[i++] = (unsigned char)n;
    return i;
}

/* parses a header in [p, end); returns its length, 0 when incomplete, -1 when malformed */
static inline int
get_header(const unsigned char *p, const unsigned char *end, unsigned *kind, uint64_t *n)
{
    uint64_t value = 0;
    int shift = 0;
    const unsigned char *q = p + 1;
    if (p >= end) {
        return 0;
    }
    *kind = p[0];
    for (;;) {
        if (q >= end) {
            return 0;
        }
        if (shift > 63) {
            return -1;
        }
        value |= (uint64_t)(*q & 0x7F) << shift;
        shift += 7;
        if (!(*q++ & 0x80)) {
            break;
        }
    }
    *n = value;
    return (int)(q - p);
}

static int
grow_bytes(char **data, size_t *cap, size_t need, size_t at_least)
{
    size_t size;
    char *bigger;
    if (need <= *cap) {
        return 0;
    }
    size = *cap ? *cap : at_least;
    while (size < need) {
        size = size > ((size_t)-1) / 2 ? need : size * 2;
    }
    bigger = PyMem_RawRealloc(*data, size);
    if (!bigger) {
        WITH_GIL(PyErr_NoMemory());
        return -1;
    }
    *data = bigger;
    *cap = size;
    return 0;
}

static int
read_full(int fd, char *dst, size_t len, uint64_t off)
{
    while (len) {
        ssize_t got = pread(fd, dst, len, (off_t)off);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            ERRNO_WITH_GIL();
            return -1;
        }
        if (got == 0) {
            WITH_GIL(PyErr_SetString(PyExc_OSError,
                            "the deduplication spill file is shorter than what was written"));
            return -1;
        }
        dst += got;
        len -= (size_t)got;
        off += (uint64_t)got;
    }
    return 0;
}

static int
write_full(int fd, const char *src, size_t len, uint64_t off)
{
    while (len) {
        ssize_t put = pwrite(fd, src, len, (off_t)off);
        if (put < 0) {
            if (errno == EINTR) {
                continue;
            }
            ERRNO_WITH_GIL();
            return -1;
        }
        src += put;
        len -= (size_t)put;
        off += (uint64_t)put;
    }
    return 0;
}

/* Writes the buffer out. On failure nothing moves: the records stay in the buffer (bytes that
 * did reach the file past file_end are ignored and written again next time). */
static int
flush_buffer(KeySetObject *s)
{
    uint64_t end;
    if (!s->buf_len) {
        return 0;
    }
    end = s->file_end + s->buf_len;
#ifdef FALLOC_FL_KEEP_SIZE
    if (end > s->file_room) {
        /* reserving blocks ahead makes the appends several times cheaper on ext4 */
        uint64_t room = end + FILE_STEP;
        if (fallocate(s->fd, FALLOC_FL_KEEP_SIZE, (off_t)s->file_room,
                      (off_t)(room - s->file_room)) == 0) {
            s->file_room = room;
        }
        else {
            s->file_room = UINT64_MAX; /* not supported here: plain appends */
        }
    }
#endif
    if (write_full(s->fd, s->buf, s->buf_len, s->file_end) < 0) {
        return -1;
    }
    s->file_end = end;
    s->buf_len = 0;
    if (s->buf_cap > BUF_KEEP) {
        PyMem_RawFree(s->buf);
        s->buf = NULL;
        s->buf_cap = 0;
    }
    return 0;
}

/* Copies n bytes with a few unaligned moves for short keys (a call to memcpy costs more). */
static inline void
copy_bytes(char *dst, const char *src, size_t n)
{
    if (n <= 16) {
        if (n >= 8) {
            uint64_t a = load64(src), b = load64(src + n - 8);
            memcpy(dst, &a, 8);
            memcpy(dst + n - 8, &b, 8);
        }
        else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, src, 4);
            memcpy(&b, src + n - 4, 4);
            memcpy(dst, &a, 4);
            memcpy(dst + n - 4, &b, 4);
        }
        else if (n) {
            dst[0] = src[0];
            dst[n >> 1] = src[n >> 1];
            dst[n - 1] = src[n - 1];
        }
    }
    else if (n <= 64) {
        char a[16], b[16], c[16], d[16];
        memcpy(a, src, 16);
        memcpy(b, src + n - 16, 16);
        if (n > 32) {
            memcpy(c, src + 16, 16);
            memcpy(d, src + n - 32, 16);
            memcpy(dst + 16, c, 16);
            memcpy(dst + n - 32, d, 16);
        }
        memcpy(dst, a, 16);
        memcpy(dst + n - 16, b, 16);
    }
    else {
        memcpy(dst, src, n);
    }
}

/* Appends the record of an item to the buffer; its offset goes to *off. */
static inline int
append_record(KeySetObject *s, const Item *it, uint64_t *off)
{
    size_t size = HEADER_MAX + it->n, hl;
    uint64_t at = s->file_end + s->buf_len;
    char *dst;
    if (UNLIKELY(at + size > OFF_LIMIT || size < it->n)) {
        WITH_GIL(PyErr_SetString(PyExc_OverflowError, "deduplication spill file is full (1 TiB of keys)"));
        return -1;
    }
    if (UNLIKELY(s->buf_len + size > s->buf_cap) &&
        grow_bytes(&s->buf, &s->buf_cap, s->buf_len + size, 2 * FLUSH_AT) < 0) {
        return -1;
    }
    dst = s->buf + s->buf_len;
    hl = put_header((unsigned char *)dst, it->kind, it->n);
    copy_bytes(dst + hl, it->p, it->n);
    s->buf_len += hl + it->n;
    *off = at;
    return 0;
}

/* Whether the bytes at data[0:avail] start with the record of an item. */
static inline int
bytes_hold(const char *data, size_t avail, const Item *it)
{
    unsigned char header[HEADER_MAX];
    size_t hl = put_header(header, it->kind, it->n);
    if (hl + it->n > avail) {
        return 0;
    }
    return memcmp(data, header, hl) == 0 && memcmp(data + hl, it->p, it->n) == 0;
}

/* EXACT: whether the record at off is the item's key, by comparing bytes: 1 yes, 0 no, -1 error.
 * Records below file_end are whole in the file; the others are whole in the buffer. A stored
 * record of the same kind and length has the same header, so it fits where the probe does. */
static int
record_is(KeySetObject *s, uint64_t off, const Item *it)
{
    unsigned char header[HEADER_MAX];
    size_t size;
    if (off >= s->file_end) {
        return bytes_hold(s->buf + (off - s->file_end), s->buf_len - (size_t)(off - s->file_end),
                          it);
    }
    size = put_header(header, it->kind, it->n) + it->n;
    if (size > s->file_end - off) {
        return 0; /* it would run past the file's records: a shorter one is stored there */
    }
    if (grow_bytes(&s->scratch, &s->scratch_cap, size, 4096) < 0 ||
        read_full(s->fd, s->scratch, size, off) < 0) {
        return -1;
    }
    s->reads++;
    return bytes_hold(s->scratch, size, it);
}

static inline size_t
record_size(const Item *it)
{
    unsigned char header[HEADER_MAX];
    return put_header(header, it->kind, it->n) + it->n;
}

/* Settles the candidates (older records whose fingerprint matched a deferred item's), in the
 * order they were found. Records close together in the file, one after the other, are read with
 * one pread: a row's id and uid are written side by side and looked up one after the other, so
 * a repeated row costs one read, not two. */
static int
settle_candidates(KeySetObject *s, Item *items)
{
    size_t i = 0, j, k;
    Cand *c = s->cands;
    size_t m = s->ncands;
    while (i < m) {
        uint64_t start = c[i].off, end;
        if (items[c[i].item].state != ST_DEFERRED) {
            i++;
            continue;
        }
        if (start >= s->file_end) { /* in the buffer */
            int is = record_is(s, start, &items[c[i].item]);
            if (is < 0) {
                return -1;
            }
            if (is) {
                items[c[i].item].state = ST_FOUND;
                items[c[i].item].at = start;
            }
            i++;
            continue;
        }
        end = start + record_size(&items[c[i].item]);
        if (end > s->file_end) {
            end = s->file_end;
        }
        for (j = i + 1; j < m && c[j].off >= start && c[j].off < s->file_end &&
                        c[j].off <= end + READ_GAP;
             j++) {
            uint64_t stop = c[j].off + record_size(&items[c[j].item]);
            if (stop > s->file_end) {
                stop = s->file_end;
            }
            if (stop > end) {
                if (stop - start > READ_SPAN) {
                    break;
                }
                end = stop;
            }
        }
        if (grow_bytes(&s->scratch, &s->scratch_cap, (size_t)(end - start), 4096) < 0 ||
            read_full(s->fd, s->scratch, (size_t)(end - start), start) < 0) {
            return -1;
        }
        s->reads++;
        for (k = i; k < j; k++) {
            Item *it = &items[c[k].item];
            size_t at = (size_t)(c[k].off - start);
            if (it->state == ST_DEFERRED &&
                bytes_hold(s->scratch + at, (size_t)(end - start) - at, it)) {
                it->state = ST_FOUND;
                it->at = c[k].off;
            }
        }
        i = j;
    }
    s->ncands = 0;
    return 0;
}

/* -- the table ------------------------------------------------------------------------------ */

#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
/* `bytes` of fresh (zeroed) anonymous memory, advised into huge pages; NULL when not mapped */
static inline void *
map_huge(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return NULL;
    }
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* fewer TLB misses; only a hint */
    return p;
}
#endif

static uint64_t *
table_alloc(uint64_t n, int *mapped)
{
    size_t bytes = (size_t)n * sizeof(uint64_t);
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
    if (bytes >= HUGE_TABLE) {
        void *p = map_huge(bytes);
        if (p) {
            *mapped = 1;
            return (uint64_t *)p;
        }
    }
#endif
    *mapped = 0;
    return (uint64_t *)calloc((size_t)n, sizeof(uint64_t));
}

static void
table_free(KeySetObject *s)
{
    if (!s->slots) {
        return;
    }
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
    if (s->mapped) {
        munmap(s->slots, (size_t)s->nslots * sizeof(uint64_t));
    }
    else
#endif
    {
        free(s->slots);
    }
    s->slots = NULL;
}

/* the most keys n slots may hold: 3/4 of them */
static inline uint64_t
load_limit(uint64_t n)
{
    return n / 4 * 3 + (n % 4) * 3 / 4;
}

static int
table_set(KeySetObject *s, uint64_t n)
{
    s->slots = table_alloc(n, &s->mapped);
    if (!s->slots) {
        return -1;
    }
    s->nslots = n;
    s->limit = load_limit(n);
    return 0;
}

/* Grows a mapped table in place to n slots, all empty: the old pages are reused (zeroed) and
 * only the rest is new, so growing touches less fresh memory and never holds two tables.
 * Returns 0 when that is not possible here (the caller frees and allocates instead). */
static int
table_regrow(KeySetObject *s, uint64_t n)
{
#if defined(MREMAP_MAYMOVE) && defined(MADV_HUGEPAGE)
    size_t old_bytes = (size_t)s->nslots * sizeof(uint64_t);
    size_t bytes = (size_t)n * sizeof(uint64_t);
    void *p;
    if (!s->mapped || !s->slots || n <= s->nslots) {
        return 0;
    }
    p = mremap(s->slots, old_bytes, bytes, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) {
        return 0;
    }
    memset(p, 0, old_bytes);
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    s->slots = (uint64_t *)p;
    s->nslots = n;
    s->limit = load_limit(n);
    return 1;
#else
    (void)s;
    (void)n;
    return 0;
#endif
}

/* slots for `keys` keys at load <= 3/4; 0 when more than MAX_SLOTS */
static uint64_t
slots_for(uint64_t keys)
{
    uint64_t n;
    if (keys > MAX_SLOTS) {
        return 0;
    }
    n = keys / 3 * 4 + ((keys % 3) * 4 + 2) / 3 + 1; /* ceil(4 keys / 3) + 1 */
    if (n > MAX_SLOTS) {
        return 0;
    }
    return n < MIN_SLOTS ? MIN_SLOTS : n;
}

/* Puts a key known to be absent in the first empty slot from its home. */
static inline void
place(KeySetObject *s, uint64_t pos, uint64_t h, uint64_t off)
{
    uint64_t *slots = s->slots;
    while (slots[pos]) {
        if (++pos == s->nslots) {
            pos = 0;
        }
    }
    slots[pos] = ((h & FP_MASK) << OFF_BITS) | off;
}

/* Keys on their way into a rebuilt table: each home is prefetched when the key comes in, and
 * the key is placed AHEAD keys later, when its slot is in the cache. */
#define RING 32 /* a power of two above AHEAD */

typedef struct {
    uint64_t home[RING], h[RING], off[RING];
    uint64_t in, out; /* keys taken in, keys placed */
} Pending;

static inline void
pending_push(KeySetObject *s, Pending *q, uint64_t h, uint64_t off)
{
    unsigned at = (unsigned)(q->in++ & (RING - 1));
    q->home[at] = home_of(s, h);
    q->h[at] = h;
    q->off[at] = off;
    PREFETCH(&s->slots[q->home[at]]);
    if (q->in - q->out > AHEAD) {
        at = (unsigned)(q->out++ & (RING - 1));
        place(s, q->home[at], q->h[at], q->off[at]);
    }
}

static void
pending_drain(KeySetObject *s, Pending *q)
{
    while (q->out < q->in) {
        unsigned at = (unsigned)(q->out++ & (RING - 1));
        place(s, q->home[at], q->h[at], q->off[at]);
    }
}

static int
rehash_record(KeySetObject *s, Pending *q, uint64_t off, unsigned kind, const char *p,
              uint64_t n)
{
    uint64_t h;
    if (s->hash_fn) {
        PyObject *key, *value;
        key = PyUnicode_DecodeUTF8(p, (Py_ssize_t)n, "surrogatepass");
        if (!key) {
            return -1;
        }
        value = PyObject_CallOneArg(s->hash_fn, key);
        Py_DECREF(key);
        if (!value) {
            return -1;
        }
        h = (uint64_t)PyLong_AsUnsignedLongLongMask(value);
        Py_DECREF(value);
        if (h == (uint64_t)-1 && PyErr_Occurred()) {
            return -1;
        }
    }
    else {
        h = hash_bytes(s, kind, p, (size_t)n);
    }
    pending_push(s, q, h, off);
    return 0;
}

/* Parses the records in data[0:len] (data holds the spill from byte `base`); returns how many
 * bytes of whole records were used, or -1. */
static Py_ssize_t
rehash_records(KeySetObject *s, Pending *q, const char *data, size_t len, uint64_t base)
{
    const unsigned char *at = (const unsigned char *)data;
    const unsigned char *end = at + len;
    while (at < end) {
        unsigned kind;
        uint64_t n;
        int hl = get_header(at, end, &kind, &n);
        if (hl < 0) {
            WITH_GIL(PyErr_SetString(PyExc_OSError, "the deduplication spill file is corrupt"));
            return -1;
        }
        if (hl == 0 || n > (uint64_t)(end - at) - (uint64_t)hl) {
            break;
        }
        if (rehash_record(s, q, base + (uint64_t)(at - (const unsigned char *)data), kind,
                          (const char *)at + hl, n) < 0) {
            return -1;
        }
        at += (size_t)hl + (size_t)n;
    }
    return (Py_ssize_t)(at - (const unsigned char *)data);
}

/* EXACT: an empty table is filled from the spill, which holds every stored key exactly once;
 * each goes to the first empty slot from its home, so the lookup invariant holds again. */
static int
refill(KeySetObject *s)
{
    Pending q;
    uint64_t pos = SPILL_START;
    size_t have = 0, cap = SCAN_CHUNK;
    char *chunk = NULL;
    Py_ssize_t used;

    q.in = q.out = 0;
    chunk = PyMem_RawMalloc(cap);
    if (!chunk) {
        WITH_GIL(PyErr_NoMemory());
        goto fail;
    }
    /* the file: records from SPILL_START to file_end, read in large steps; chunk holds the
     * bytes from pos on */
    while (pos + have < s->file_end) {
        size_t want = cap - have;
        if (want > s->file_end - (pos + have)) {
            want = (size_t)(s->file_end - (pos + have));
        }
        if (read_full(s->fd, chunk + have, want, pos + have) < 0) {
            goto fail;
        }
        have += want;
        used = rehash_records(s, &q, chunk, have, pos);
        if (used < 0) {
            goto fail;
        }
        memmove(chunk, chunk + used, have - (size_t)used);
        have -= (size_t)used;
        pos += (uint64_t)used;
        if (have == cap && grow_bytes(&chunk, &cap, cap * 2, cap) < 0) { /* a huge record */
            goto fail;
        }
    }
    if (have) {
        WITH_GIL(PyErr_SetString(PyExc_OSError, "the deduplication spill file is corrupt"));
        goto fail;
    }
    /* then the buffer */
    used = rehash_records(s, &q, s->buf, s->buf_len, s->file_end);
    if (used < 0) {
        goto fail;
    }
    pending_drain(s, &q);
    PyMem_RawFree(chunk);
    chunk = NULL;
    if ((size_t)used != s->buf_len || q.out != s->count) {
        WITH_GIL(PyErr_SetString(PyExc_OSError, "the deduplication spill file is corrupt"));
        goto fail;
    }
    return 0;
fail:
    PyMem_RawFree(chunk);
    s->broken = 1;
    return -1;
}

/* A larger table, filled from the spill (refill). The old table is freed first (only one
 * table is held at a time). */
static int
rebuild(KeySetObject *s, uint64_t n)
{
    uint64_t old = s->nslots;
    int grew = 1;

    if (!table_regrow(s, n)) {
        table_free(s);
        if (table_set(s, n) < 0) {
            grew = 0; /* refill at the old size, then report the failure */
            if (table_set(s, old) < 0) {
                s->broken = 1;
                WITH_GIL(PyErr_NoMemory());
                return -1;
            }
        }
    }
    if (refill(s) < 0) {
        return -1;
    }
    if (!grew) {
        WITH_GIL(PyErr_NoMemory());
        return -1;
    }
    s->rebuilds++;
    return 0;
}

/* -- the early table ------------------------------------------------------------------------ */

/* A table sized for many keys (`expected`) costs its first touch: the kernel zeroes ~100 MB of
 * pages, 10-20 ms here, and far more when it is short of free huge pages or the machine is a
 * VM whose host backs that memory lazily (up to 300 ms measured, after a large process freed
 * its memory). The first keys would touch nearly every page at once (homes are random), so
 * before the first batch could go out. From EARLY_TABLE on, the table is mapped at once but
 * faulted in by a thread (early_start), while a small table takes the first keys; the first
 * call that finds the big one ready (or the small one full: it waits then) moves the keys into
 * it from the spill (early_adopt: a few thousand keys, well under a millisecond). */

#ifdef HAVE_FILLER
static void *
early_fill(void *arg)
{
    KeySetObject *s = (KeySetObject *)arg;
    char *p = (char *)s->early;
    size_t bytes = (size_t)s->early_n * sizeof(uint64_t), at, i;
    /* A write per page, not MADV_POPULATE_WRITE: that holds the process's map lock while it
     * works, and every mmap of the other threads (malloc, Python's arenas) waited for it: up
     * to 30 ms each here when memory is slow to come, which held the first request up. */
    for (at = 0; at < bytes && !__atomic_load_n(&s->stop, __ATOMIC_RELAXED); at += FILL_STEP) {
        size_t len = bytes - at < FILL_STEP ? bytes - at : FILL_STEP;
        for (i = 0; i < len; i += 4096) {
            ((volatile char *)p)[at + i] = 0;
        }
    }
    __atomic_store_n(&s->filled, 1, __ATOMIC_RELEASE);
    return NULL;
}
#endif

/* Maps a table of n slots and starts the filler on it; 0 when not done here (the caller
 * allocates the table of n slots itself), 1 when s->early is set. */
static int
early_start(KeySetObject *s, uint64_t n)
{
#ifdef HAVE_FILLER
    size_t bytes = (size_t)n * sizeof(uint64_t);
    void *p;
    if (bytes < EARLY_TABLE || n <= FIRST_SLOTS) {
        return 0;
    }
    p = map_huge(bytes);
    if (!p) {
        return 0;
    }
    s->early = (uint64_t *)p;
    s->early_n = n;
    if (pthread_create(&s->filler, NULL, early_fill, s) != 0) {
        munmap(p, bytes);
        s->early = NULL;
        return 0;
    }
    s->filling = 1;
    return 1;
#else
    (void)s;
    (void)n;
    return 0;
#endif
}

/* Waits for the filler (which stops early when `stop` is set); call without the GIL when it
 * may take long. */
static void
early_join(KeySetObject *s, int stop)
{
#ifdef HAVE_FILLER
    if (s->filling) {
        if (stop) {
            __atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
        }
        pthread_join(s->filler, NULL);
        s->filling = 0;
    }
#else
    (void)s;
    (void)stop;
#endif
}

static int
early_ready(KeySetObject *s)
{
#ifdef HAVE_FILLER
    return __atomic_load_n(&s->filled, __ATOMIC_ACQUIRE);
#else
    (void)s;
    return 1;
#endif
}

static void
early_free(KeySetObject *s)
{
    if (s->early) {
        early_join(s, 1);
        munmap(s->early, (size_t)s->early_n * sizeof(uint64_t));
        s->early = NULL;
    }
}

/* EXACT: the big table replaces the small one, empty (a fresh map, only ever written zeroes),
 * and is filled from the spill as a rebuild is. */
static int
early_adopt(KeySetObject *s)
{
    early_join(s, 0);
    table_free(s);
    s->slots = s->early;
    s->nslots = s->early_n;
    s->limit = load_limit(s->early_n);
    s->mapped = 1;
    s->early = NULL;
    return refill(s);
}

/* Makes room for `more` keys: the table doubles (more than once if need be) and is rebuilt. */
static int
ensure_room(KeySetObject *s, uint64_t more)
{
    uint64_t need = s->count + more, n = s->nslots;
    if (need <= s->limit) {
        return 0;
    }
    if (!slots_for(need)) {
        WITH_GIL(PyErr_SetString(PyExc_OverflowError, "deduplication table is full (2**32 slots)"));
        return -1;
    }
    while (n / 4 * 3 < need && n < MAX_SLOTS) {
        n = n * 2 < MAX_SLOTS ? n * 2 : MAX_SLOTS;
    }
    if (n / 4 * 3 < need) {
        n = slots_for(need);
    }
    return rebuild(s, n);
}

static int
usable(KeySetObject *s)
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the key set is in use (by another thread, or called from its hash_fn)");
        return 0;
    }
    if (s->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the key set is closed");
        return 0;
    }
    if (s->broken) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the key set is unusable: growing its table failed earlier");
        return 0;
    }
    return 1;
}

/* -- adding keys ---------------------------------------------------------------------------- */

/* EXACT: an item is marked seen only when record_is() or bytes_hold() found its bytes; every
 * other path ends at an empty slot, where it is stored. Items are settled in order, so a key
 * repeated within the batch is new only at its first position: that one is stored (and its
 * record is in the buffer) before a later one reaches the same slots. Keys whose fingerprint
 * matches an older record are deferred so that the reads of one batch can be merged; a later
 * item with the same key follows the same slots, so it is deferred too and settled after. */
static int
process(KeySetObject *s, Item *items, size_t n)
{
    size_t i;
    uint64_t base, *slots;
    int deferred = 0, lookup = s->lookup;

    if (!lookup && s->early && (early_ready(s) || s->count + n > s->limit) &&
        early_adopt(s) < 0) {
        return -1;
    }
    if (!lookup && ensure_room(s, n) < 0) {
        return -1;
    }
    slots = s->slots;
    base = s->file_end + s->buf_len; /* records at or past base were added by this batch */
    for (i = 0; i < n; i++) {
        items[i].home = home_of(s, items[i].h);
        if (i < AHEAD) {
            PREFETCH(&slots[items[i].home]);
        }
    }
    s->ncands = 0;
    for (i = 0; i < n; i++) {
        Item *it = &items[i];
        uint64_t pos = it->home, fp = it->h & FP_MASK, off;
        int older = 0;
        if (i + AHEAD < n) {
            PREFETCH(&slots[items[i + AHEAD].home]);
        }
        for (;;) {
            uint64_t v = slots[pos];
            if (!v) {
                break;
            }
            if ((v >> OFF_BITS) == fp) {
                off = v & OFF_MASK;
                if (off >= base) { /* added by this batch: in the buffer */
                    if (bytes_hold(s->buf + (off - s->file_end),
                                   s->buf_len - (size_t)(off - s->file_end), it)) {
                        it->state = ST_SEEN;
                        it->at = off;
                        goto next;
                    }
                }
                else {
                    if (s->ncands == s->cands_cap) {
                        size_t cap = s->cands_cap ? 2 * s->cands_cap : 256;
                        Cand *more = PyMem_RawRealloc(s->cands, cap * sizeof(Cand));
                        if (!more) {
                            WITH_GIL(PyErr_NoMemory());
                            return -1;
                        }
                        s->cands = more;
                        s->cands_cap = cap;
                    }
                    s->cands[s->ncands].off = off;
                    s->cands[s->ncands].item = i;
                    s->ncands++;
                    older = 1;
                }
            }
            if (++pos == s->nslots) {
                pos = 0;
            }
        }
        if (older) {
            it->state = ST_DEFERRED;
            deferred = 1;
            continue;
        }
        if (lookup) { /* EXACT: an empty slot ends the scan, so the key is not stored */
            it->state = ST_NEW;
            continue;
        }
        /* EXACT: an empty slot ends the scan, so the key is not stored: store it here */
        if (append_record(s, it, &off) < 0) {
            return -1;
        }
        slots[pos] = (fp << OFF_BITS) | off;
        s->count++;
        s->kinds[it->kind]++;
        it->state = ST_NEW;
    next:;
    }
    if (deferred) {
        if (settle_candidates(s, items) < 0) {
            return -1;
        }
        for (i = 0; i < n; i++) {
            Item *it = &items[i];
            uint64_t pos, fp, off;
            if (it->state == ST_FOUND) {
                it->state = ST_SEEN;
                continue;
            }
            if (it->state != ST_DEFERRED) {
                continue;
            }
            if (lookup) { /* no stored record is this key (a lookup adds none) */
                it->state = ST_NEW;
                continue;
            }
            /* no older record is this key; one added by this batch (an earlier deferred item
             * with the same key) may be */
            pos = it->home;
            fp = it->h & FP_MASK;
            for (;;) {
                uint64_t v = slots[pos];
                if (!v) {
                    break;
                }
                if ((v >> OFF_BITS) == fp && (v & OFF_MASK) >= base) {
                    off = v & OFF_MASK;
                    if (bytes_hold(s->buf + (off - s->file_end),
                                   s->buf_len - (size_t)(off - s->file_end), it)) {
                        it->state = ST_SEEN;
                        it->at = off;
                        break;
                    }
                }
                if (++pos == s->nslots) {
                    pos = 0;
                }
            }
            if (it->state == ST_SEEN) {
                continue;
            }
            if (append_record(s, it, &off) < 0) {
                return -1;
            }
            slots[pos] = (fp << OFF_BITS) | off;
            s->count++;
            s->kinds[it->kind]++;
            it->state = ST_NEW;
        }
    }
    if (lookup) {
        for (i = 0; i < n; i++) {
            int found = items[i].state == ST_SEEN;
            *items[i].out = (unsigned char)found;
            *items[i].where = found ? items[i].at : 0;
        }
        return 0;
    }
    for (i = 0; i < n; i++) {
        *items[i].out = items[i].state == ST_NEW;
    }
    if (s->buf_len >= FLUSH_AT && flush_buffer(s) < 0) {
        return -1;
    }
    return 0;
}

static size_t
encode_utf8(unsigned char *dst, int kind, const void *data, Py_ssize_t len)
{
    /* UTF-8 with surrogates encoded like any other code point (Python's "surrogatepass") */
    unsigned char *q = dst;
    Py_ssize_t i;
    for (i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *q++ = (unsigned char)c;
        }
        else if (c < 0x800) {
            *q++ = (unsigned char)(0xC0 | (c >> 6));
            *q++ = (unsigned char)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000) {
            *q++ = (unsigned char)(0xE0 | (c >> 12));
            *q++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *q++ = (unsigned char)(0x80 | (c & 0x3F));
        }
        else {
            *q++ = (unsigned char)(0xF0 | (c >> 18));
            *q++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            *q++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *q++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    return (size_t)(q - dst);
}

/* Fills an item from a str (already checked to be one); computes its hash. */
static int
fill_item(KeySetObject *s, Item *it, PyObject *key, unsigned kind, unsigned char *out)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    it->kind = (unsigned char)kind;
    it->out = out;
    it->where = NULL;
    it->state = ST_PENDING;
    if (PyUnicode_IS_ASCII(key)) { /* the str's own bytes are its UTF-8 */
        it->p = (const char *)PyUnicode_DATA(key);
        it->n = (size_t)len;
        it->arena = (size_t)-1;
    }
    else {
        size_t most = 4 * (size_t)len;
        if (grow_bytes(&s->arena, &s->arena_cap, s->arena_len + most, 1u << 16) < 0) {
            return -1;
        }
        it->arena = s->arena_len;
        it->p = s->arena + s->arena_len; /* fixed up once the batch is gathered */
        it->n = encode_utf8((unsigned char *)s->arena + s->arena_len, PyUnicode_KIND(key),
                            PyUnicode_DATA(key), len);
        s->arena_len += it->n;
    }
    if (s->hash_fn) {
        PyObject *value = PyObject_CallOneArg(s->hash_fn, key);
        if (!value) {
            return -1;
        }
        it->h = (uint64_t)PyLong_AsUnsignedLongLongMask(value);
        Py_DECREF(value);
        if (it->h == (uint64_t)-1 && PyErr_Occurred()) {
            return -1;
        }
    }
    /* without a hash_fn the hash is computed in run_batch, without the GIL */
    return 0;
}

static int
run_batch(KeySetObject *s, size_t n)
{
    size_t i;
    int result;
    for (i = 0; i < n; i++) { /* the arena may have moved while the batch was gathered */
        if (s->items[i].arena != (size_t)-1) {
            s->items[i].p = s->arena + s->items[i].arena;
        }
    }
    if (s->hash_fn) {
        result = process(s, s->items, n);
    }
    else {
        /* No Python code runs from here to the end of process(): the keys are in tuples the
         * call owns (add_kinds) or held by it (add), the answers in buffers it holds, and the
         * set is marked busy, so other threads may run meanwhile (a dedup thread overlaps
         * with the reader this way). Errors take the GIL to be set (WITH_GIL). */
        Item *items = s->items;
        Py_BEGIN_ALLOW_THREADS
        for (i = 0; i < n; i++) {
            items[i].h = hash_bytes(s, items[i].kind, items[i].p, items[i].n);
        }
        result = process(s, items, n);
        Py_END_ALLOW_THREADS
    }
    s->arena_len = 0;
    if (s->arena_cap > BUF_KEEP) {
        PyMem_RawFree(s->arena);
        s->arena = NULL;
        s->arena_cap = 0;
    }
    return result;
}

static int
ensure_items(KeySetObject *s)
{
    if (!s->items) {
        s->items = PyMem_RawMalloc(BATCH * sizeof(Item));
        if (!s->items) {
            PyErr_NoMemory();
            return -1;
        }
        s->items_cap = BATCH;
    }
    return 0;
}

static int
check_kind(PyObject *obj, unsigned *kind)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < 1 || value > 255) {
        PyErr_Format(PyExc_ValueError, "key kind must be 1-255, not %ld", value);
        return -1;
    }
    *kind = (unsigned)value;
    return 0;
}

static int
check_key(PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "keys must be str (or None for no key), not %.100s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(key) < 0) {
        return -1;
    }
#endif
    return 0;
}

typedef struct {
    PyObject *seq;   /* a list or tuple of the keys (owned) */
    Py_buffer new_;  /* where the answers go */
    Py_buffer present;
    Py_buffer where; /* find_kinds: the offsets of the records found */
    int have_new, have_present, have_where;
    unsigned kind;
    Py_ssize_t n;
    Py_ssize_t missing;
} Part;

static void
release_parts(Part *parts, Py_ssize_t count)
{
    Py_ssize_t i;
    for (i = 0; i < count; i++) {
        Py_XDECREF(parts[i].seq);
        if (parts[i].have_new) {
            PyBuffer_Release(&parts[i].new_);
        }
        if (parts[i].have_present) {
            PyBuffer_Release(&parts[i].present);
        }
        if (parts[i].have_where) {
            PyBuffer_Release(&parts[i].where);
        }
    }
    PyMem_Free(parts);
}

static int
get_output(PyObject *obj, Py_buffer *view, Py_ssize_t n, Py_ssize_t itemsize)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    if (view->len != n * itemsize) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "an answer buffer does not match its keys' length");
        return -1;
    }
    return 0;
}

/* Takes keys[row] of a part: its answer when it is None, else into the batch (run when full). */
static inline int
take_key(KeySetObject *s, Part *part, Py_ssize_t row, size_t *n, int check)
{
    PyObject *key = PySequence_Fast_GET_ITEM(part->seq, row);
    unsigned char *present = (unsigned char *)part->present.buf + row;
    unsigned char *out = (unsigned char *)part->new_.buf + row;
    if (key == Py_None) {
        *present = 0;
        *out = 0;
        if (part->have_where) {
            ((uint64_t *)part->where.buf)[row] = 0;
        }
        part->missing++;
        return 0;
    }
    if (check && check_key(key) < 0) {
        return -1;
    }
    *present = 1;
    if (fill_item(s, &s->items[*n], key, part->kind, out) < 0) {
        return -1;
    }
    if (part->have_where) {
        s->items[*n].where = (uint64_t *)part->where.buf + row;
    }
    if (++*n == BATCH) {
        *n = 0;
        return run_batch(s, BATCH);
    }
    return 0;
}

PyDoc_STRVAR(add_kinds_doc,
             "add_kinds(parts, news, presents, /) -> list[int]\n\n"
             "parts: a sequence of (keys, kind); keys a sequence of str or None (no key).\n"
             "news[i], presents[i]: writable 1-byte buffers of len(keys): new[j] is 1 when\n"
             "keys[j] is seen for the first time, present[j] 0 when keys[j] is None.\n"
             "Returns the number of None keys of each part.");

PyDoc_STRVAR(find_kinds_doc,
             "find_kinds(parts, founds, presents, wheres, /) -> list[int]\n\n"
             "Looks keys up without adding any. parts, presents and the result as for\n"
             "add_kinds; founds[i][j] is 1 when keys[j] is in the set; wheres[i] (a writable\n"
             "buffer of len(keys) uint64) gets the byte offset of its record (0 when not found):\n"
             "one number per stored key, never that of another key.");

/* add_kinds (lookup 0: three arguments) and find_kinds (lookup 1: four, the last the offsets) */
static PyObject *
kinds_impl(KeySetObject *s, PyObject *const *args, Py_ssize_t nargs, int lookup)
{
    PyObject *parts_in, *news, *presents, *wheres = NULL, *result = NULL;
    Part *parts = NULL;
    Py_ssize_t count = 0, i, row, rows = 0, total = 0;
    size_t n = 0;
    int by_row = 1, check;

    if (nargs != 3 + lookup) {
        PyErr_Format(PyExc_TypeError, "%s() takes %d arguments",
                     lookup ? "find_kinds" : "add_kinds", 3 + lookup);
        return NULL;
    }
    parts_in = PySequence_Fast(args[0], "parts must be a sequence of (keys, kind)");
    if (!parts_in) {
        return NULL;
    }
    news = args[1];
    presents = args[2];
    if (lookup) {
        wheres = args[3];
    }
    count = PySequence_Fast_GET_SIZE(parts_in);
    if (PySequence_Size(news) != count || PySequence_Size(presents) != count ||
        (wheres && PySequence_Size(wheres) != count)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "one answer buffer per part is needed");
        }
        Py_DECREF(parts_in);
        return NULL;
    }
    parts = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Part));
    if (!parts) {
        Py_DECREF(parts_in);
        return PyErr_NoMemory();
    }
    for (i = 0; i < count; i++) {
        Part *part = &parts[i];
        PyObject *pair = PySequence_Fast_GET_ITEM(parts_in, i), *keys, *kind, *obj;
        Py_ssize_t j;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            if (!PySequence_Check(pair) || PySequence_Size(pair) != 2) {
                PyErr_Clear();
                PyErr_SetString(PyExc_TypeError, "parts must be (keys, kind) pairs");
                goto done;
            }
        }
        keys = PySequence_GetItem(pair, 0);
        if (!keys) {
            goto done;
        }
        kind = PySequence_GetItem(pair, 1);
        if (!kind) {
            Py_DECREF(keys);
            goto done;
        }
        if (check_kind(kind, &part->kind) < 0) {
            Py_DECREF(keys);
            Py_DECREF(kind);
            goto done;
        }
        Py_DECREF(kind);
        /* copied into a tuple: a hash_fn runs Python code, and without one other threads run
         * while the keys are probed (run_batch); either could change a list being read */
        part->seq = PySequence_Tuple(keys);
        Py_DECREF(keys);
        if (!part->seq) {
            goto done;
        }
        part->n = PySequence_Fast_GET_SIZE(part->seq);
        obj = PySequence_GetItem(news, i);
        if (!obj) {
            goto done;
        }
        part->have_new = get_output(obj, &part->new_, part->n, 1) == 0;
        Py_DECREF(obj);
        if (!part->have_new) {
            goto done;
        }
        obj = PySequence_GetItem(presents, i);
        if (!obj) {
            goto done;
        }
        part->have_present = get_output(obj, &part->present, part->n, 1) == 0;
        Py_DECREF(obj);
        if (!part->have_present) {
            goto done;
        }
        if (wheres) {
            obj = PySequence_GetItem(wheres, i);
            if (!obj) {
                goto done;
            }
            part->have_where = get_output(obj, &part->where, part->n, 8) == 0;
            Py_DECREF(obj);
            if (!part->have_where) {
                goto done;
            }
        }
        if (part->n > rows) {
            rows = part->n;
        }
        total += part->n;
        for (j = 0; j < i; j++) {
            if (parts[j].kind == part->kind) {
                by_row = 0; /* one kind twice: its parts go in order, one after the other */
            }
        }
    }
    /* Python code may have run above (a sequence that is not a list or tuple, a buffer):
     * from here on none does (but a hash_fn, whose keys are in tuples), so the lists are read
     * as they are now; only a length that changed would matter */
    for (i = 0; i < count; i++) {
        if (PySequence_Fast_GET_SIZE(parts[i].seq) != parts[i].n) {
            PyErr_SetString(PyExc_RuntimeError, "the keys changed while they were being added");
            goto done;
        }
    }
    /* every key is checked before any is added (a TypeError leaves the set as it was): here
     * when there is more than one batch, else while the batch is gathered */
    if (total > BATCH) {
        for (i = 0; i < count; i++) {
            for (row = 0; row < parts[i].n; row++) {
                PyObject *key = PySequence_Fast_GET_ITEM(parts[i].seq, row);
                if (key != Py_None && check_key(key) < 0) {
                    goto done;
                }
            }
        }
    }
    /* Rows go in order and, within a row, the parts in order: a row's id and uid records are
     * written side by side (see settle_candidates). Kinds are separate key spaces, so this
     * gives the same answers as taking the parts one after the other; a kind given twice
     * takes its parts one after the other. */
    check = total <= BATCH;
    if (by_row) {
        for (row = 0; row < rows; row++) {
            for (i = 0; i < count; i++) {
                if (row < parts[i].n && take_key(s, &parts[i], row, &n, check) < 0) {
                    goto done;
                }
            }
        }
    }
    else {
        for (i = 0; i < count; i++) {
            for (row = 0; row < parts[i].n; row++) {
                if (take_key(s, &parts[i], row, &n, check) < 0) {
                    goto done;
                }
            }
        }
    }
    if (n && run_batch(s, n) < 0) {
        n = 0;
        goto done;
    }
    n = 0;
    result = PyList_New(count);
    if (!result) {
        goto done;
    }
    for (i = 0; i < count; i++) {
        PyObject *missing = PyLong_FromSsize_t(parts[i].missing);
        if (!missing) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, missing);
    }
done:
    s->arena_len = 0;
    release_parts(parts, count);
    Py_DECREF(parts_in);
    return result;
}

static PyObject *
KeySet_add_kinds(KeySetObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (!usable(s) || ensure_items(s) < 0) {
        return NULL;
    }
    s->busy = 1;
    result = kinds_impl(s, args, nargs, 0);
    s->busy = 0;
    return result;
}

static PyObject *
KeySet_find_kinds(KeySetObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (!usable(s) || ensure_items(s) < 0) {
        return NULL;
    }
    s->busy = 1;
    s->lookup = 1;
    result = kinds_impl(s, args, nargs, 1);
    s->lookup = 0;
    s->busy = 0;
    return result;
}

PyDoc_STRVAR(add_doc, "add(key, kind, /) -> bool\n\nAdds one key; True when it is new.");

static PyObject *
add_impl(KeySetObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned kind;
    unsigned char out = 0;
    PyObject *key;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add() takes 2 arguments");
        return NULL;
    }
    if (check_kind(args[1], &kind) < 0) {
        return NULL;
    }
    key = args[0];
    if (check_key(key) < 0) {
        return NULL;
    }
    Py_INCREF(key); /* a hash_fn may drop the caller's last reference */
    if (fill_item(s, &s->items[0], key, kind, &out) < 0 || run_batch(s, 1) < 0) {
        s->arena_len = 0;
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(key);
    return PyBool_FromLong(out);
}

static PyObject *
KeySet_add(KeySetObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *result;
    if (!usable(s) || ensure_items(s) < 0) {
        return NULL;
    }
    s->busy = 1;
    result = add_impl(s, args, nargs);
    s->busy = 0;
    return result;
}

/* -- the type ------------------------------------------------------------------------------- */

static void
release_all(KeySetObject *s)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    early_free(s);
    table_free(s);
    PyMem_RawFree(s->buf);
    s->buf = NULL;
    s->buf_len = s->buf_cap = 0;
    PyMem_RawFree(s->items);
    s->items = NULL;
    PyMem_RawFree(s->arena);
    s->arena = NULL;
    s->arena_len = s->arena_cap = 0;
    PyMem_RawFree(s->cands);
    s->cands = NULL;
    s->ncands = s->cands_cap = 0;
    PyMem_RawFree(s->scratch);
    s->scratch = NULL;
    s->scratch_cap = 0;
}

static PyObject *
KeySet_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"fd", "seed", "expected", "hash_fn", NULL};
    int fd;
    unsigned long long seed;
    long long expected;
    PyObject *hash_fn = Py_None;
    KeySetObject *s;
    uint64_t n;
    char header[SPILL_START] = {0};

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKL|O:KeySet", names, &fd, &seed, &expected,
                                     &hash_fn)) {
        return NULL;
    }
    if (hash_fn != Py_None && !PyCallable_Check(hash_fn)) {
        PyErr_SetString(PyExc_TypeError, "hash_fn must be callable or None");
        return NULL;
    }
    if (expected < 0) {
        expected = 0;
    }
    /* estimates run a little low: room for an eighth more */
    n = slots_for((uint64_t)expected + (uint64_t)expected / 8);
    if (!n) {
        PyErr_SetString(PyExc_OverflowError, "expected is more keys than a table holds");
        return NULL;
    }
    s = (KeySetObject *)type->tp_alloc(type, 0);
    if (!s) {
        return NULL;
    }
    s->fd = -1; /* the descriptor is taken over only once everything else worked */
    s->k0 = finalise(seed ^ UINT64_C(0x6A09E667F3BCC908));
    s->k1 = finalise(seed + GOLDEN) | 1;
    if (hash_fn != Py_None) {
        Py_INCREF(hash_fn);
        s->hash_fn = hash_fn;
    }
    if (table_set(s, early_start(s, n) ? FIRST_SLOTS : n) < 0) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    if (write_full(fd, header, SPILL_START, 0) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    s->file_end = SPILL_START;
    s->file_room = SPILL_START;
#ifdef O_NOATIME
    {
        /* reads need not update the access time (saves a little per pread); best effort */
        int flags = fcntl(fd, F_GETFL);
        if (flags >= 0) {
            (void)fcntl(fd, F_SETFL, flags | O_NOATIME);
        }
    }
#endif
    s->fd = fd;
    return (PyObject *)s;
}

static int
KeySet_traverse(KeySetObject *s, visitproc visit, void *arg)
{
    Py_VISIT(s->hash_fn);
    return 0;
}

static int
KeySet_clear(KeySetObject *s)
{
    if (s->hash_fn) {
        s->broken = 1; /* its keys were placed by that hash: no other may look them up */
    }
    Py_CLEAR(s->hash_fn);
    return 0;
}

static void
KeySet_dealloc(KeySetObject *s)
{
    PyObject_GC_UnTrack(s);
    KeySet_clear(s);
    release_all(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

PyDoc_STRVAR(close_doc, "close()\n\nCloses the spill file (it vanishes) and frees the table.");

static PyObject *
KeySet_close(KeySetObject *s, PyObject *unused)
{
    if (s->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the key set is in use (by another thread, or called from its hash_fn)");
        return NULL;
    }
    release_all(s);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(flush_doc, "flush()\n\nWrites the buffered records to the spill file.");

static PyObject *
KeySet_flush(KeySetObject *s, PyObject *unused)
{
    if (!usable(s) || flush_buffer(s) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unique_doc, "unique(kind, /) -> int\n\nHow many distinct keys of kind were added.");

static PyObject *
KeySet_unique(KeySetObject *s, PyObject *arg)
{
    unsigned kind;
    if (check_kind(arg, &kind) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(s->kinds[kind]);
}

static Py_ssize_t
KeySet_len(KeySetObject *s)
{
    return (Py_ssize_t)s->count;
}

static PyObject *
get_slots(KeySetObject *s, void *closure)
{
    return PyLong_FromUnsignedLongLong(s->early ? s->early_n : s->slots ? s->nslots : 0);
}

static PyObject *
get_table_bytes(KeySetObject *s, void *closure)
{
    uint64_t n = s->early ? s->early_n + s->nslots : s->slots ? s->nslots : 0;
    return PyLong_FromUnsignedLongLong(n * sizeof(uint64_t));
}

static PyObject *
get_early(KeySetObject *s, void *closure)
{
    return PyBool_FromLong(s->early != NULL);
}

static PyObject *
get_spill_bytes(KeySetObject *s, void *closure)
{
    return PyLong_FromUnsignedLongLong(s->file_end + s->buf_len);
}

static PyObject *
get_buffered(KeySetObject *s, void *closure)
{
    return PyLong_FromSize_t(s->buf_len);
}

static PyObject *
get_fileno(KeySetObject *s, void *closure)
{
    return PyLong_FromLong(s->fd);
}

static PyObject *
get_reads(KeySetObject *s, void *closure)
{
    return PyLong_FromUnsignedLongLong(s->reads);
}

static PyObject *
get_rebuilds(KeySetObject *s, void *closure)
{
    return PyLong_FromUnsignedLongLong(s->rebuilds);
}

static PyObject *
get_closed(KeySetObject *s, void *closure)
{
    return PyBool_FromLong(s->fd < 0);
}

static PyMethodDef KeySet_methods[] = {
    {"add", (PyCFunction)(void (*)(void))KeySet_add, METH_FASTCALL, add_doc},
    {"add_kinds", (PyCFunction)(void (*)(void))KeySet_add_kinds, METH_FASTCALL, add_kinds_doc},
    {"find_kinds", (PyCFunction)(void (*)(void))KeySet_find_kinds, METH_FASTCALL,
     find_kinds_doc},
    {"unique", (PyCFunction)KeySet_unique, METH_O, unique_doc},
    {"close", (PyCFunction)KeySet_close, METH_NOARGS, close_doc},
    {"flush", (PyCFunction)KeySet_flush, METH_NOARGS, flush_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef KeySet_getset[] = {
    {"slots", (getter)get_slots, NULL, "slots in the table (0 once closed)", NULL},
    {"table_bytes", (getter)get_table_bytes, NULL, "RAM held by the table", NULL},
    {"spill_bytes", (getter)get_spill_bytes, NULL, "bytes of records, written or buffered", NULL},
    {"buffered", (getter)get_buffered, NULL, "bytes of records not yet written", NULL},
    {"fileno", (getter)get_fileno, NULL, "the spill file's descriptor (-1 once closed)", NULL},
    {"reads", (getter)get_reads, NULL, "preads made to confirm fingerprint matches", NULL},
    {"rebuilds", (getter)get_rebuilds, NULL, "times the table was rebuilt", NULL},
    {"early", (getter)get_early, NULL,
     "whether a small table takes the keys while the one sized for them is faulted in", NULL},
    {"closed", (getter)get_closed, NULL, "whether close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods KeySet_as_sequence = {
    .sq_length = (lenfunc)KeySet_len,
};

PyDoc_STRVAR(KeySet_doc,
             "KeySet(fd, seed, expected, hash_fn=None)\n\n"
             "An exact set of (kind, str) keys: a table in RAM, the keys' bytes in the spill\n"
             "file fd (taken over on success: closed by close() or when the object goes).\n"
             "See bulksend.dedup.keyset_c.");

static PyTypeObject KeySetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bulksend.dedup._keyset.KeySet",
    .tp_basicsize = sizeof(KeySetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = KeySet_doc,
    .tp_new = KeySet_new,
    .tp_dealloc = (destructor)KeySet_dealloc,
    .tp_traverse = (traverseproc)KeySet_traverse,
    .tp_clear = (inquiry)KeySet_clear,
    .tp_methods = KeySet_methods,
    .tp_getset = KeySet_getset,
    .tp_as_sequence = &KeySet_as_sequence,
};

static int
module_exec(PyObject *module)
{
    if (PyType_Ready(&KeySetType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "KeySet", (PyObject *)&KeySetType) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(module, "FLUSH_AT", FLUSH_AT) < 0 ||
        PyModule_AddIntConstant(module, "MIN_SLOTS", MIN_SLOTS) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "The compiled table behind bulksend.dedup.keyset_c.KeySet (optional: without it\n"
             "bulksend uses the numpy key set). The design and the argument that the set is\n"
             "exact are in that module's docstring.");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bulksend.dedup._keyset",
    .m_doc = module_doc,
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__keyset(void)
{
    return PyModuleDef_Init(&module_def);
}
