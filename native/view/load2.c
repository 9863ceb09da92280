// Manifest format version 2 (docs/manifest-v2.md) read straight into the view's tables (tables.h).
//
// The body is hostile input from another host: every rule of version 1's validator
// (src/manifest/validate.ts) and of version 2's encoding is checked here, and the first problem ends
// the load with one line naming it. The body is read through a window of READ_WINDOW bytes (pread),
// never whole, in three passes over the same bytes:
//
// 1. scan: every record decoded and checked on its own; kept per inode are its number (8 bytes,
//    ascending: INODE records must be) and kind (1 byte), and the counts that size each section.
// 2. DIR records: each directory's entries written as dirents with their names, sorted by name bytes
//    (memcmp, then shorter first) in place, duplicates refused; children resolved by binary search
//    over the inode numbers; a parent per inode (4 bytes) recorded. Then the tree: every inode has a
//    parent, every directory reaches the root (no cycles).
// 3. INODE records: the inodes, extents (neighbours contiguous on file and device merged, as the JS
//    packer does), copies, xattrs and the data blob.
//
// Index = rank of the inode number among the INODE records, with the root swapped to index 0 (FUSE
// nodeid 1), so ino → index is a binary search (m2_index_of) and needs no table. tables_fd is sized
// in pass 1; pass 2 writes dirents and names through a shared mapping of it (page cache, written back
// and evictable, not heap; its pages dropped from the resident set every DROP_EVERY dirents), pass 3
// the other sections through 1 MiB appenders (pwrite). Heap: 13 bytes per inode (number, kind and
// flags, parent), 12 per directory (its dirents' range), fixed buffers (window, appenders, dedup
// cache, one inode's xattrs; ~10.5 MiB): 23.5 MB for 1,000,000 files, 141 MB for 10,000,000, reported in
// m2_load_out.heap_bytes.
//
// Sections lie in the JS packer's order (tables.ts): header | inodes | dirents | extents | xattrs |
// copies | devices | names | data. Device fds are -1 (none yet): the control plane writes them once it
// has opened and proven the devices (addon setTablesDevices).
#include "load2.h"
#include "tables.h"
#include "../csum.h"
#include "../manifest/v2.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_WINDOW (1u << 20)   // bytes of body read at once; every field but checksums fits in half
#define DEDUP_SLOTS (1u << 18)   // data blob dedup cache: 4 MiB, direct-mapped (see data_add)
#define XATTRS_MAX (M2_MAX_XATTR_LIST / 7 + 1) // names of at least "user.x" and a NUL
#define MAX_EXTENTS_IN_ALL 100000000u          // validate.ts LIMITS.extents
#define NO_PARENT UINT32_MAX
#define DROP_EVERY 65536u // dirents between drop_pages
#define APPEND_BYTES (1u << 20)
#define SCRATCH_BYTES (M2_MAX_XATTR_LIST + 16)

// loader.flags per inode: its kind (S_IFMT >> 12 fits in 4 bits), whether a DIR record named it, and
// the state of the walk that proves every directory reaches the root.
#define F_KIND 0x0fu
#define F_DIR_RECORD 0x10u
#define F_WALKING 0x20u
#define F_ROOTED 0x40u
#define KIND_OF(mode) (((mode) & S_IFMT) >> 12)

// A section written in order through a buffer of APPEND_BYTES: pwrite when full or when the next
// write is elsewhere.
struct appender {
  uint64_t at;  // file offset of buf[0]
  uint32_t len; // bytes in buf
  uint8_t *buf;
};

struct dir_range {
  uint32_t index, first, count;
};

struct dedup_slot {
  uint64_t hash;
  uint32_t off, len;
};

struct window {
  int fd;
  uint64_t pos, end; // file offsets: the next byte, the end of the body
  uint64_t at;       // file offset of buf[0]
  uint32_t len;      // bytes valid in buf
  uint8_t *buf;
};

// Where a record's problem is: a message starts with it.
enum where { AT_BODY, AT_RECORD, AT_INODE };

struct loader {
  const struct m2_load_in *in;
  struct window w;
  jmp_buf fail;
  char *msg;
  size_t msg_len;
  enum where where;
  uint64_t where_n; // the inode number, or the INODE record's position
  int writing;      // passes 2 and 3

  // Per inode: numbers by rank; flags and parents by table index (rank with the root swapped to 0).
  uint64_t *inos;
  uint8_t *flags;
  uint32_t *parent;
  uint32_t n, root_rank;
  uint32_t next_rank; // pass 3: the INODE record's rank
  uint32_t last_rank; // rank_of's hint

  // Pass 1's totals, which size the sections; passes 2 and 3 check they write exactly these.
  uint64_t dirs, entries, names_size, extents, raw_extents, xattrs, copies, data_max;
  unsigned __int128 blocks512;
  uint64_t inodes_at; // file offset of the first INODE record (body_end: none)

  // Decoding state that deltas refer to: the previous INODE record's ino and times, the device cursor.
  uint64_t prev_ino;
  int64_t prev_time[3];
  int64_t cursor;

  // The tables file: mapped for the header, dirents and names (pass 2 sorts each directory's entries
  // in place); the other sections written by pass 3 through appenders (pwrite: a page overwritten
  // whole is never zero-filled first, as a page of a mapping is). Counts written so far per section.
  uint8_t *map;
  uint64_t map_len;
  struct xt_header *h;
  struct xt_dirent *dirents;
  char *names;
  uint64_t n_dirents, n_extents, n_xattrs, n_copies, n_names, n_data;
  uint64_t dropped_at; // n_dirents when pass 2 last dropped the mapping's pages
  struct appender inodes, extentv, xattrv, copyv, data;
  uint8_t *scratch; // SCRATCH_BYTES: data read back (dedup) or copied through (checksums)
  // Each directory's dirents (pass 2), sorted by index for pass 3, which meets the inodes in that order.
  struct dir_range *dir_ranges;
  uint64_t n_dir_ranges;
  struct dedup_slot *dedup;
  uint64_t *device_ends; // the caller's, filled in pass 1

  // One inode's xattrs while its record is read: names back to back (each NUL-terminated, as
  // listxattr returns them), where each starts, its value.
  char *xnames;
  uint32_t *xname_off, *xvalue_off, *xvalue_len;
  uint16_t *xname_len;

  uint64_t heap;
};

// ------------------------------------------------------------------------------------- failing

static const char *where_prefix(struct loader *L, char *buf, size_t len) {
  if (L->where == AT_INODE) snprintf(buf, len, "inode %llu: ", (unsigned long long)L->where_n);
  else if (L->where == AT_RECORD) snprintf(buf, len, "INODE record %llu: ", (unsigned long long)L->where_n);
  else snprintf(buf, len, "manifest: ");
  return buf;
}

__attribute__((format(printf, 2, 3), noreturn)) static void fail(struct loader *L, const char *fmt, ...) {
  char prefix[64];
  size_t used = (size_t)snprintf(L->msg, L->msg_len, "%s", where_prefix(L, prefix, sizeof prefix));
  if (used < L->msg_len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->msg + used, L->msg_len - used, fmt, ap);
    va_end(ap);
  }
  longjmp(L->fail, 1);
}

// Passes 2 and 3 read the bytes pass 1 checked: anything else means the file changed under the
// loader (written on the other host meanwhile), and nothing written may pass what pass 1 sized.
__attribute__((noreturn)) static void changed(struct loader *L) {
  L->where = AT_BODY;
  fail(L, "the manifest changed while it was read");
}

// A name for a message: JSON-quoted, bytes outside printable ASCII as \xNN (as validate.ts quote()
// shows bytes that are not UTF-8), cut after 80 bytes. Into `out` (at least 340 bytes).
static const char *quoted(const uint8_t *p, uint64_t len, char *out, size_t out_len) {
  size_t o = 0;
  out[o++] = '"';
  for (uint64_t i = 0; i < len && i < 80 && o + 8 < out_len; i++) {
    uint8_t c = p[i];
    if (c == '"' || c == '\\') o += (size_t)snprintf(out + o, out_len - o, "\\%c", c);
    else if (c >= 0x20 && c < 0x7f) out[o++] = (char)c;
    else o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
  }
  snprintf(out + o, out_len - o, "\"%s", len > 80 ? "..." : "");
  return out;
}
#define QUOTE_LEN 340

// ------------------------------------------------------------------------------------- reading

static void fill(struct loader *L, uint64_t want) {
  struct window *w = &L->w;
  uint64_t n = w->end - w->pos < READ_WINDOW ? w->end - w->pos : READ_WINDOW;
  if (n < want) fail(L, "a record runs past the end of the body (truncated)");
  w->at = w->pos;
  w->len = 0;
  while (w->len < n) {
    ssize_t got = pread(w->fd, w->buf + w->len, n - w->len, (off_t)(w->at + w->len));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail(L, "cannot read the manifest: %s", got < 0 ? strerror(errno) : "it is shorter than its trailer says");
    w->len += (uint32_t)got;
  }
}

// `n` (at most READ_WINDOW / 2) bytes at the read position, which moves past them.
static inline const uint8_t *take(struct loader *L, uint64_t n) {
  struct window *w = &L->w;
  if (w->pos < w->at || w->pos + n > w->at + w->len) fill(L, n);
  const uint8_t *p = w->buf + (w->pos - w->at);
  w->pos += n;
  return p;
}

static void skip(struct loader *L, uint64_t n) {
  if (n > L->w.end - L->w.pos) fail(L, "a record runs past the end of the body (truncated)");
  L->w.pos += n;
}

static inline uint8_t byte(struct loader *L) {
  return *take(L, 1);
}

// Unsigned LEB128 at p (avail bytes there): the bytes it takes, 0 when it runs past avail, -1 when it
// is not in its shortest form, -2 when it passes 56 bits (over any limit).
static inline int decode_varint(const uint8_t *p, uint64_t avail, uint64_t *out) {
  uint64_t v = 0;
  for (unsigned i = 0; i < avail; i++) {
    uint8_t b = p[i];
    if (i > 0 && b == 0) return -1;
    if (i == 8) return -2; // 8 bytes already hold 56 bits
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) return *out = v, (int)i + 1;
  }
  return 0;
}

// Unsigned LEB128 in its shortest form, at most `max`.
static inline uint64_t varint_max(struct loader *L, uint64_t max, const char *what) {
  struct window *w = &L->w;
  uint64_t left = w->end - w->pos, want = left < M2_VARINT_MAX_BYTES ? left : M2_VARINT_MAX_BYTES;
  if (w->pos < w->at || w->pos + want > w->at + w->len) fill(L, want);
  uint64_t v = 0;
  int n = decode_varint(w->buf + (w->pos - w->at), want, &v);
  if (n == 0) fail(L, "a record runs past the end of the body (truncated)");
  if (n == -1) fail(L, "%s: varint not in its shortest form", what);
  if (n == -2) fail(L, "%s: value over 2^53 - 1", what);
  w->pos += (uint64_t)n;
  if (v > max) fail(L, "%s: %llu is over the limit of %llu", what, (unsigned long long)v, (unsigned long long)max);
  return v;
}

static uint64_t varint(struct loader *L, const char *what) {
  return varint_max(L, M2_VALUE_MAX, what);
}

// (v << 1) ^ (v >> 63) decoded; the encoded form is a varint like any (at most 2^53 - 1), so the
// magnitude of v is below 2^52.
static int64_t zigzag(struct loader *L, const char *what) {
  uint64_t raw = varint(L, what);
  return raw & 1 ? -(int64_t)(raw >> 1) - 1 : (int64_t)(raw >> 1);
}

static uint32_t u32le(struct loader *L) {
  const uint8_t *p = take(L, 4);
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// ------------------------------------------------------------------------------------- names

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
static int utf8_ok(const uint8_t *s, uint64_t len) {
  for (uint64_t i = 0; i < len;) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    unsigned n;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) n = 1, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0) n = 2, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0) n = 3, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (len - i <= n) return 0;
    for (unsigned k = 1; k <= n; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += n + 1;
  }
  return 1;
}

static int byte_names(struct loader *L) {
  return (L->in->features & M2L_BYTE_NAMES) != 0;
}

static const char *const NOT_UTF8 = "holds bytes that are not UTF-8 but the manifest does not declare feature \"byte-names\"";

// A directory entry's name: what validate.ts entryNameProblem refuses.
static const char *entry_name_problem(struct loader *L, const uint8_t *p, uint64_t len) {
  if (len == 0) return "is empty";
  if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) return "is reserved";
  if (memchr(p, '/', len) != NULL) return "contains \"/\"";
  if (memchr(p, 0, len) != NULL) return "contains NUL";
  if (!byte_names(L) && !utf8_ok(p, len)) return NOT_UTF8;
  return NULL;
}

// What validate.ts xattrNameProblem refuses.
static const char *xattr_name_problem(struct loader *L, const uint8_t *p, uint64_t len) {
  static const char *const prefixes[] = {"user.", "trusted.", "security.", "system.", "btrfs."};
  if (!byte_names(L) && !utf8_ok(p, len)) return NOT_UTF8;
  if (len == 0) return "is empty";
  if (memchr(p, 0, len) != NULL) return "contains NUL";
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t pl = strlen(prefixes[i]);
    if (len >= pl && memcmp(p, prefixes[i], pl) == 0) return len > pl ? NULL : "has nothing after its namespace";
  }
  return "must start with user., trusted., security., system., btrfs.";
}

// A `bytes` field's length, checked against [min, max] (max at most READ_WINDOW / 2 unless skipped).
static uint64_t bytes_len(struct loader *L, uint64_t min, uint64_t max, const char *what) {
  uint64_t len = varint(L, what);
  if (len < min || len > max) {
    if (len > max) fail(L, "%s is %llu bytes, over the limit of %llu", what, (unsigned long long)len, (unsigned long long)max);
    fail(L, "%s is empty", what);
  }
  return len;
}

// Tables order: memcmp, then the shorter first.
static int name_cmp(const void *a, uint32_t alen, const void *b, uint32_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  return c != 0 ? c : (alen > blen) - (alen < blen);
}

// ------------------------------------------------------------------------------------- inodes

static uint32_t rank_to_index(const struct loader *L, uint32_t rank) {
  return rank == L->root_rank ? 0 : rank == 0 ? L->root_rank : rank;
}

static uint64_t ino_of_index(const struct loader *L, uint32_t index) {
  return L->inos[rank_to_index(L, index)]; // the swap is its own inverse
}

// The rank of `ino`, or -1. Entries mostly name inodes in ascending order (a directory's files were
// made one after the other): the rank after the last one found is tried before a binary search.
static int64_t rank_of(struct loader *L, uint64_t ino) {
  uint32_t next = L->last_rank + 1;
  if (next < L->n && L->inos[next] == ino) return L->last_rank = next;
  uint32_t lo = 0, hi = L->n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (L->inos[mid] == ino) return L->last_rank = mid;
    if (L->inos[mid] < ino) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

// Table index of `ino`, or -1.
static int64_t index_of(struct loader *L, uint64_t ino) {
  int64_t rank = rank_of(L, ino);
  return rank < 0 ? -1 : (int64_t)rank_to_index(L, (uint32_t)rank);
}

static unsigned kind_of(const struct loader *L, uint32_t index) {
  return L->flags[index] & F_KIND;
}

static const char *kind_name(unsigned kind) {
  switch (kind << 12) {
    case S_IFREG: return "file";
    case S_IFDIR: return "dir";
    case S_IFLNK: return "symlink";
    case S_IFIFO: return "fifo";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    default: return "socket";
  }
}

// ------------------------------------------------------------------------------------- data blob

static uint64_t hash_bytes(const uint8_t *p, uint64_t len, int nul) {
  uint64_t h = 0xcbf29ce484222325u ^ (uint64_t)nul;
  for (uint64_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3u;
  return h ^ len;
}

static void write_all(struct loader *L, const void *p, uint64_t len, uint64_t at) {
  for (uint64_t done = 0; done < len;) {
    ssize_t n = pwrite(L->in->tables_fd, (const char *)p + done, len - done, (off_t)(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(L, "cannot write the tables file: %s", n < 0 ? strerror(errno) : "no progress");
    done += (uint64_t)n;
  }
}

static void flush(struct loader *L, struct appender *a) {
  write_all(L, a->buf, a->len, a->at);
  a->at += a->len;
  a->len = 0;
}

// `len` bytes for file offset `at`: buffered when they continue what is buffered.
static void put(struct loader *L, struct appender *a, uint64_t at, const void *p, uint64_t len) {
  if (at != a->at + a->len || a->len + len > APPEND_BYTES) {
    flush(L, a);
    a->at = at;
  }
  if (len > APPEND_BYTES) {
    write_all(L, p, len, at);
    a->at = at + len;
    return;
  }
  memcpy(a->buf + a->len, p, len);
  a->len += (uint32_t)len;
}

static void read_exact(struct loader *L, int fd, void *p, uint64_t len, uint64_t at, const char *what) {
  for (uint64_t done = 0; done < len;) {
    ssize_t got = pread(fd, (char *)p + done, len - done, (off_t)(at + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail(L, "cannot read the %s: %s", what, got < 0 ? strerror(errno) : "short read");
    done += (uint64_t)got;
  }
}

// Append `len` bytes (and a NUL when `nul`) to the data blob, unshared.
static uint32_t data_put(struct loader *L, const uint8_t *p, uint64_t len, int nul) {
  uint64_t total = len + (nul ? 1 : 0);
  if (L->n_data + total > UINT32_MAX) fail(L, "the tables' data blob passes 4 GiB (u32 offsets)");
  if (total > L->data_max - L->n_data) changed(L);
  uint32_t off = (uint32_t)L->n_data;
  static const uint8_t zero = 0;
  put(L, &L->data, L->h->data_off + off, p, len);
  if (nul) put(L, &L->data, L->h->data_off + off + len, &zero, 1);
  L->n_data += total;
  return off;
}

// Whether the `total` bytes of the data blob at `off` are p's `len` and, with `nul`, a NUL.
static int data_equals(struct loader *L, uint32_t off, uint64_t total, const uint8_t *p, uint64_t len, int nul) {
  uint64_t at = L->h->data_off + off;
  const uint8_t *have = L->scratch;
  if (at >= L->data.at && at + total <= L->data.at + L->data.len) have = L->data.buf + (at - L->data.at);
  else read_exact(L, L->in->tables_fd, L->scratch, total, at, "tables file"); // written out already: read it back
  return memcmp(have, p, len) == 0 && (!nul || have[len] == 0);
}

// Append as data_put, but share identical bytes added before when the dedup cache still remembers
// them. The cache is direct-mapped and bounded (4 MiB): repeated values (the same xattr on many
// files, one symlink target) are met again soon and shared; a value whose slot was taken since is
// stored again, costing bytes, never correctness.
static uint32_t data_add(struct loader *L, const uint8_t *p, uint64_t len, int nul) {
  uint64_t hash = hash_bytes(p, len, nul);
  struct dedup_slot *s = &L->dedup[hash & (DEDUP_SLOTS - 1)];
  uint64_t total = len + (nul ? 1 : 0);
  if (s->hash == hash && s->len == total && data_equals(L, s->off, total, p, len, nul)) return s->off;
  uint32_t off = data_put(L, p, len, nul);
  *s = (struct dedup_slot){.hash = hash, .off = off, .len = (uint32_t)total};
  return off;
}

// `len` bytes of the manifest at file offset `at` appended to the data blob, unshared (checksums).
static uint32_t data_copy(struct loader *L, uint64_t at, uint64_t len) {
  if (L->n_data + len > UINT32_MAX) fail(L, "the tables' data blob passes 4 GiB (u32 offsets)");
  if (len > L->data_max - L->n_data) changed(L);
  uint32_t off = (uint32_t)L->n_data;
  for (uint64_t done = 0; done < len;) {
    uint64_t n = len - done < SCRATCH_BYTES ? len - done : SCRATCH_BYTES;
    read_exact(L, L->w.fd, L->scratch, n, at + done, "manifest");
    put(L, &L->data, L->h->data_off + off + done, L->scratch, n);
    done += n;
  }
  L->n_data += len;
  return off;
}

// ------------------------------------------------------------------------------------- DIR records

static __thread const char *sort_names; // qsort's comparator has no context argument in C11

static int dirent_cmp(const void *a, const void *b) {
  const struct xt_dirent *x = a, *y = b;
  return name_cmp(sort_names + x->name_off, x->name_len, sort_names + y->name_off, y->name_len);
}

// Each directory other than the root is entered exactly once and no entry names the root; every
// other inode gets the first directory naming it as its parent.
static void link_children(struct loader *L, uint32_t dir, uint32_t first, uint32_t count) {
  char q[QUOTE_LEN];
  for (uint32_t k = first; k < first + count; k++) {
    const struct xt_dirent *d = &L->dirents[k];
    uint32_t c = d->child;
    const uint8_t *name = (const uint8_t *)L->names + d->name_off;
    if (c == 0) fail(L, "entry %s points back at the root directory (a cycle)", quoted(name, d->name_len, q, sizeof q));
    if (kind_of(L, c) == KIND_OF(S_IFDIR) && L->parent[c] != NO_PARENT) {
      if (L->parent[c] == dir)
        fail(L, "directory %llu has two parents: it is entered twice here, the second time as %s", (unsigned long long)ino_of_index(L, c),
             quoted(name, d->name_len, q, sizeof q));
      L->where_n = ino_of_index(L, c);
      fail(L, "directory has two parents: inode %llu and inode %llu (entry %s)", (unsigned long long)ino_of_index(L, L->parent[c]),
           (unsigned long long)ino_of_index(L, dir), quoted(name, d->name_len, q, sizeof q));
    }
    if (L->parent[c] == NO_PARENT) L->parent[c] = dir;
  }
}

// A DIR record: checked in pass 1; written as dirents, sorted and linked in pass 2.
static void dir_record(struct loader *L) {
  char q[QUOTE_LEN];
  L->where = AT_BODY;
  uint64_t dir_ino = varint(L, "DIR record: directory inode");
  if (dir_ino == 0) fail(L, "DIR record names inode 0");
  L->where = AT_INODE;
  L->where_n = dir_ino;
  uint64_t n = varint(L, "entries");
  if (n > M2_MAX_ENTRIES_PER_DIR) fail(L, "%llu entries, over the limit of %u", (unsigned long long)n, M2_MAX_ENTRIES_PER_DIR);
  uint32_t dir = 0, first = (uint32_t)L->n_dirents;
  if (!L->writing) {
    if (++L->dirs > L->in->n_dirs) fail(L, "more DIR records than the trailer's %u", L->in->n_dirs);
    L->entries += n;
    if (L->entries > L->in->n_entries) fail(L, "more directory entries than the trailer's %llu", (unsigned long long)L->in->n_entries);
  } else {
    int64_t at = index_of(L, dir_ino);
    if (at < 0) fail(L, "has a DIR record but no INODE record");
    dir = (uint32_t)at;
    if (kind_of(L, dir) != KIND_OF(S_IFDIR)) fail(L, "is a %s, not a dir, but has a DIR record", kind_name(kind_of(L, dir)));
    if (L->flags[dir] & F_DIR_RECORD) fail(L, "has two DIR records");
    L->flags[dir] |= F_DIR_RECORD;
  }
  int64_t child = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = bytes_len(L, 0, M2_MAX_NAME, "entry name");
    const uint8_t *name = take(L, len);
    const char *problem = L->writing ? NULL : entry_name_problem(L, name, len);
    if (problem != NULL) fail(L, "entry %s %s", quoted(name, len, q, sizeof q), problem);
    int64_t delta = zigzag(L, "entry ino");
    child += delta;
    if (child < 1 || child > (int64_t)M2_VALUE_MAX)
      fail(L, "entry %s has ino %lld, not a positive integer", quoted(name, len, q, sizeof q), (long long)child);
    if (!L->writing) {
      L->names_size += len + 1;
      continue;
    }
    int64_t c = index_of(L, (uint64_t)child);
    if (c < 0) fail(L, "entry %s points at inode %lld, which does not exist", quoted(name, len, q, sizeof q), (long long)child);
    if (L->n_dirents >= L->entries || len + 1 > L->names_size - L->n_names) changed(L);
    memcpy(L->names + L->n_names, name, len);
    L->names[L->n_names + len] = 0;
    L->dirents[L->n_dirents++] = (struct xt_dirent){.name_off = (uint32_t)L->n_names, .child = (uint32_t)c, .name_len = (uint16_t)len};
    L->n_names += len + 1;
  }
  if (!L->writing) return;
  sort_names = L->names;
  qsort(L->dirents + first, n, sizeof *L->dirents, dirent_cmp);
  for (uint32_t k = first + 1; k < first + n; k++) {
    const struct xt_dirent *a = &L->dirents[k - 1], *b = &L->dirents[k];
    if (dirent_cmp(a, b) == 0) fail(L, "entry %s appears twice", quoted((const uint8_t *)L->names + b->name_off, b->name_len, q, sizeof q));
  }
  link_children(L, dir, first, (uint32_t)n);
  if (L->n_dir_ranges >= L->in->n_dirs) changed(L);
  L->dir_ranges[L->n_dir_ranges++] = (struct dir_range){.index = dir, .first = first, .count = (uint32_t)n};
}

// ------------------------------------------------------------------------------------- the tree

// Every inode but the root has a parent, and every directory reaches the root through its parents:
// with one parent each, a directory that does not is in a cycle cut off from the root.
static void check_tree(struct loader *L) {
  L->where = AT_INODE;
  for (uint32_t i = 1; i < L->n; i++) {
    if (L->parent[i] != NO_PARENT) continue;
    L->where_n = ino_of_index(L, i);
    fail(L, "is not reachable from the root (an orphan)");
  }
  L->parent[0] = 0; // the root names itself
  L->flags[0] |= F_ROOTED;
  for (uint32_t i = 1; i < L->n; i++) {
    if (kind_of(L, i) != KIND_OF(S_IFDIR) || (L->flags[i] & F_ROOTED)) continue;
    uint32_t j = i;
    while (!(L->flags[j] & (F_ROOTED | F_WALKING))) {
      L->flags[j] |= F_WALKING;
      j = L->parent[j];
    }
    if (!(L->flags[j] & F_ROOTED)) {
      L->where_n = ino_of_index(L, j);
      fail(L, "is not reachable from the root: its directory is its own ancestor (a cycle)");
    }
    for (j = i; !(L->flags[j] & F_ROOTED); j = L->parent[j]) L->flags[j] = (uint8_t)((L->flags[j] & ~F_WALKING) | F_ROOTED);
  }
}

// ------------------------------------------------------------------------------------- extents

struct extent {
  uint64_t file_offset, device_offset, length;
  uint32_t device, extras;
  uint32_t n_copies;
  uint64_t copy_device[M2_MAX_COPIES], copy_offset[M2_MAX_COPIES];
  uint64_t csums_at, csums_len; // file offset and length of its checksums in the manifest
  struct xt_compressed z;
};

static void check_device_range(struct loader *L, uint32_t i, const char *what, uint64_t device, uint64_t off, uint64_t span) {
  uint64_t size = L->in->device_sizes[device];
  if (off > size || span > size - off)
    fail(L, "extents[%u]%s past device end: bytes %llu..%llu of device %llu, which is %llu bytes", i, what, (unsigned long long)off,
         (unsigned long long)(off + span), (unsigned long long)device, (unsigned long long)size);
}

// An extent's copies and checksums (extras bit 0) and encoding (bit 1), read and checked as
// validate.ts checkCompression and checkCopiesAndCsums check them.
static void extent_extras(struct loader *L, uint32_t i, struct extent *e) {
  const struct m2_load_in *in = L->in;
  if (e->extras & ~(uint32_t)(M2_EXT_CSUMS | M2_EXT_COMPRESSED)) fail(L, "extents[%u] has unknown extras bits 0x%x", i, e->extras);
  if (e->extras & M2_EXT_CSUMS) {
    if (!(in->features & M2L_CHECKSUMS)) fail(L, "extents[%u] has copies or csums but the manifest does not declare feature \"data-checksums\"", i);
    e->n_copies = (uint32_t)varint_max(L, M2_MAX_COPIES, "extent copies");
    for (uint32_t k = 0; k < e->n_copies; k++) {
      e->copy_device[k] = varint(L, "copy device");
      e->copy_offset[k] = varint(L, "copy deviceOffset");
      if (e->copy_device[k] >= in->n_devices)
        fail(L, "extents[%u].copies[%u].device %llu does not exist (the manifest lists %u devices)", i, k, (unsigned long long)e->copy_device[k], in->n_devices);
    }
    e->csums_len = varint(L, "csums length");
    e->csums_at = L->w.pos;
    skip(L, e->csums_len);
  }
  if (e->extras & M2_EXT_COMPRESSED) {
    if (!(in->features & M2L_COMPRESSED)) fail(L, "extents[%u] is compressed but the manifest does not declare feature \"compressed-extents\"", i);
    if (!(e->extras & M2_EXT_CSUMS)) fail(L, "extents[%u] is compressed but has no csums: what is decoded must be what btrfs checksummed", i);
    e->z.algorithm = byte(L);
    if (e->z.algorithm < XT_ZLIB || e->z.algorithm > XT_ZSTD) fail(L, "extents[%u].compression must be 1 (zlib), 2 (lzo) or 3 (zstd), got %u", i, e->z.algorithm);
    uint64_t disk = varint(L, "diskLength"), decoded = varint(L, "decodedLength"), decoded_off = varint(L, "decodedOffset");
    if (disk < 1 || disk > XT_ENCODED_MAX) fail(L, "extents[%u].diskLength must be an integer from 1 to %u, got %llu", i, XT_ENCODED_MAX, (unsigned long long)disk);
    if (decoded < 1 || decoded > XT_DECODED_MAX) fail(L, "extents[%u].decodedLength must be an integer from 1 to %u, got %llu", i, XT_DECODED_MAX, (unsigned long long)decoded);
    if (decoded_off >= decoded) fail(L, "extents[%u].decodedOffset must be an integer from 0 to decodedLength - 1, got %llu", i, (unsigned long long)decoded_off);
    if (decoded_off + e->length > decoded)
      fail(L, "extents[%u]: its %llu bytes from decodedOffset %llu run past decodedLength %llu", i, (unsigned long long)e->length, (unsigned long long)decoded_off,
           (unsigned long long)decoded);
    e->z.disk_length = (uint32_t)disk, e->z.decoded_length = (uint32_t)decoded, e->z.decoded_offset = (uint32_t)decoded_off;
  }
}

// What the extent takes on its device (a compressed one: its encoded stream) and the checks of it.
static uint64_t extent_span(struct loader *L, uint32_t i, const struct extent *e) {
  uint64_t span = e->extras & M2_EXT_COMPRESSED ? e->z.disk_length : e->length;
  check_device_range(L, i, "", e->device, e->device_offset, span);
  if (!(e->extras & M2_EXT_CSUMS)) return span;
  uint32_t sector = L->in->sector_size;
  if (span % sector != 0) fail(L, "extents[%u] has csums but its %s %llu is not whole sectors of %u bytes", i, e->extras & M2_EXT_COMPRESSED ? "diskLength" : "length",
                               (unsigned long long)span, sector);
  uint64_t want = span / sector * L->in->csum_size;
  if (e->csums_len != want) fail(L, "extents[%u].csums must be %llu bytes (one checksum per sector), got %llu bytes", i, (unsigned long long)want, (unsigned long long)e->csums_len);
  for (uint32_t k = 0; k < e->n_copies; k++) {
    char what[32];
    snprintf(what, sizeof what, ".copies[%u]", k);
    check_device_range(L, i, what, e->copy_device[k], e->copy_offset[k], span);
  }
  return span;
}

// An extent in the tables' form, its copies and checksums (and encoding) written.
static struct xt_extent table_extent(struct loader *L, const struct extent *e) {
  struct xt_extent x = {.file_offset = e->file_offset, .device_offset = e->device_offset, .length = e->length, .device = e->device};
  if (e->extras & M2_EXT_CSUMS) {
    x.flags = XT_EXT_CSUM;
    x.copy_first = (uint32_t)L->n_copies;
    x.copy_count = (uint16_t)e->n_copies;
    for (uint32_t k = 0; k < e->n_copies; k++, L->n_copies++) {
      if (L->n_copies >= L->copies) changed(L);
      struct xt_copy c = {.device_offset = e->copy_offset[k], .device = (uint32_t)e->copy_device[k]};
      put(L, &L->copyv, L->h->copies_off + L->n_copies * sizeof c, &c, sizeof c);
    }
    if (e->extras & M2_EXT_COMPRESSED) {
      x.flags |= XT_EXT_COMPRESSED;
      data_put(L, (const uint8_t *)&e->z, sizeof e->z, 0); // unshared: it must lie just before the checksums
    }
    x.csum_off = data_copy(L, e->csums_at, e->csums_len);
  }
  return x;
}

static void write_extent(struct loader *L, const struct xt_extent *x) {
  if (L->n_extents >= L->extents) changed(L);
  put(L, &L->extentv, L->h->extents_off + L->n_extents * sizeof *x, x, sizeof *x);
  L->n_extents++;
}

// A regular file's extents: sorted and disjoint by construction (gaps), checked as validate.ts
// checkExtents checks them; neighbours contiguous on file and device without checksums are merged.
// Returns the number of extents in the tables (after merging).
static uint32_t file_extents(struct loader *L, uint64_t size, uint32_t *first) {
  uint64_t n = varint(L, "extents");
  L->raw_extents += n;
  if (L->raw_extents > MAX_EXTENTS_IN_ALL) fail(L, "more than %u extents in all", MAX_EXTENTS_IN_ALL);
  *first = (uint32_t)L->n_extents;
  uint64_t prev_end = 0;
  uint32_t merged = 0, prev_device = 0;
  int mergeable = 0; // the previous extent has no extras
  struct xt_extent last; // pass 3: the previous extent, written once no other merges into it
  for (uint32_t i = 0; i < n; i++) {
    struct extent e = {0};
    uint64_t gap = varint(L, "extent gap");
    e.length = varint(L, "extent length");
    uint64_t device = varint(L, "extent device");
    int64_t at = zigzag(L, "extent deviceOffset");
    e.extras = (uint32_t)varint_max(L, UINT32_MAX, "extent extras");
    if (e.length == 0) fail(L, "extents[%u].length must be a positive integer, got 0", i);
    if (gap > M2_VALUE_MAX - prev_end || prev_end + gap > M2_VALUE_MAX - e.length)
      fail(L, "extents[%u].fileOffset must be a non-negative integer, got %llu", i, (unsigned long long)(prev_end + gap));
    e.file_offset = prev_end + gap;
    if (e.file_offset >= size) fail(L, "extents[%u] starts at %llu, at or past the file size %llu", i, (unsigned long long)e.file_offset, (unsigned long long)size);
    if (device >= L->in->n_devices) fail(L, "extents[%u].device %llu does not exist (the manifest lists %u devices)", i, (unsigned long long)device, L->in->n_devices);
    e.device = (uint32_t)device;
    int64_t dev_off = L->cursor + at;
    if (dev_off < 0 || dev_off > (int64_t)M2_VALUE_MAX) fail(L, "extents[%u].deviceOffset must be a non-negative integer, got %lld", i, (long long)dev_off);
    e.device_offset = (uint64_t)dev_off;
    extent_extras(L, i, &e);
    uint64_t span = extent_span(L, i, &e);
    L->cursor = dev_off + (int64_t)e.length;
    prev_end = e.file_offset + e.length;
    // Continues the previous extent on file (no gap) and device (at the cursor), neither with extras.
    int merges = i > 0 && mergeable && e.extras == 0 && gap == 0 && at == 0 && prev_device == e.device;
    mergeable = e.extras == 0;
    prev_device = e.device;
    if (!L->writing) {
      if (e.device_offset + span > L->device_ends[e.device]) L->device_ends[e.device] = e.device_offset + span;
      if (e.extras & M2_EXT_CSUMS) L->data_max += e.csums_len + (e.extras & M2_EXT_COMPRESSED ? sizeof(struct xt_compressed) : 0);
      L->copies += e.n_copies;
    }
    if (merges) {
      if (L->writing) last.length += e.length;
      continue;
    }
    if (L->writing && merged > 0) write_extent(L, &last);
    merged++;
    if (L->writing) last = table_extent(L, &e);
  }
  if (L->writing && merged > 0) write_extent(L, &last);
  return merged;
}

// ------------------------------------------------------------------------------------- xattrs

struct xname {
  uint32_t off;
  uint16_t len;
};

static int xname_cmp(const void *a, const void *b) {
  const struct xname *x = a, *y = b;
  return name_cmp(sort_names + x->off, x->len, sort_names + y->off, y->len);
}

// Names unique within the inode (checked by sorting them: at most XATTRS_MAX).
static void check_xattr_names_unique(struct loader *L, uint32_t n) {
  struct xname *v = (struct xname *)L->xvalue_off; // scratch in pass 1: as many u32 pairs as xattrs
  for (uint32_t k = 0; k < n; k++) v[k] = (struct xname){.off = L->xname_off[k], .len = L->xname_len[k]};
  sort_names = L->xnames;
  qsort(v, n, sizeof *v, xname_cmp);
  char q[QUOTE_LEN];
  for (uint32_t k = 1; k < n; k++)
    if (xname_cmp(&v[k - 1], &v[k]) == 0) fail(L, "xattr name %s appears twice", quoted((const uint8_t *)L->xnames + v[k].off, v[k].len, q, sizeof q));
}

// An inode's xattrs: in the tables, its names back to back in the data blob (listxattr's reply) and
// one record per xattr in manifest order.
static void inode_xattrs(struct loader *L, uint32_t *first, uint32_t *count) {
  char q[QUOTE_LEN];
  uint64_t n = varint(L, "xattrs");
  if (n == 0) fail(L, "has the xattrs bit but no xattrs");
  if (n > XATTRS_MAX) fail(L, "xattr names take over %u bytes, more than listxattr can return", M2_MAX_XATTR_LIST);
  uint64_t list = 0;
  for (uint32_t k = 0; k < n; k++) {
    uint64_t len = bytes_len(L, 0, M2_MAX_NAME, "xattr name");
    const uint8_t *name = take(L, len);
    const char *problem = L->writing ? NULL : xattr_name_problem(L, name, len);
    if (problem != NULL) fail(L, "xattr name %s %s", quoted(name, len, q, sizeof q), problem);
    if (list + len + 1 > M2_MAX_XATTR_LIST) fail(L, "xattr names take over %u bytes, more than listxattr can return", M2_MAX_XATTR_LIST);
    memcpy(L->xnames + list, name, len);
    L->xnames[list + len] = 0;
    L->xname_off[k] = (uint32_t)list;
    L->xname_len[k] = (uint16_t)len;
    list += len + 1;
    uint64_t value_len = varint(L, "xattr value length");
    if (value_len > M2_MAX_XATTR_VALUE)
      fail(L, "xattr %s value is over the limit of %u bytes", quoted((const uint8_t *)L->xnames + L->xname_off[k], len, q, sizeof q), M2_MAX_XATTR_VALUE);
    if (!L->writing) {
      skip(L, value_len);
      L->data_max += value_len;
      continue;
    }
    L->xvalue_len[k] = (uint32_t)value_len;
    L->xvalue_off[k] = data_add(L, take(L, value_len), value_len, 0);
  }
  if (!L->writing) {
    check_xattr_names_unique(L, (uint32_t)n);
    L->data_max += list;
    L->xattrs += n;
    return;
  }
  uint32_t list_off = data_add(L, (const uint8_t *)L->xnames, list, 0);
  *first = (uint32_t)L->n_xattrs;
  *count = (uint32_t)n;
  for (uint32_t k = 0; k < n; k++, L->n_xattrs++) {
    if (L->n_xattrs >= L->xattrs) changed(L);
    struct xt_xattr x = {.name_off = list_off + L->xname_off[k], .value_off = L->xvalue_off[k], .value_len = L->xvalue_len[k], .name_len = L->xname_len[k]};
    put(L, &L->xattrv, L->h->xattrs_off + L->n_xattrs * sizeof x, &x, sizeof x);
  }
}

// ------------------------------------------------------------------------------------- INODE records

// Directory `index`'s dirents, as pass 2 wrote them (none without a DIR record): a binary search
// over the ranges, sorted by index after pass 2 (12 bytes per directory).
static void dir_range_of(struct loader *L, uint32_t index, uint32_t *first, uint32_t *count) {
  uint64_t lo = 0, hi = L->n_dir_ranges;
  *first = *count = 0;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    const struct dir_range *r = &L->dir_ranges[mid];
    if (r->index == index) {
      *first = r->first, *count = r->count;
      return;
    }
    if (r->index < index) lo = mid + 1;
    else hi = mid;
  }
}

static int dir_range_cmp(const void *a, const void *b) {
  const struct dir_range *x = a, *y = b;
  return (x->index > y->index) - (x->index < y->index);
}

static int known_type(uint64_t type) {
  return type == S_IFREG || type == S_IFDIR || type == S_IFLNK || type == S_IFIFO || type == S_IFCHR || type == S_IFBLK || type == S_IFSOCK;
}

// A symlink's target: 1..4095 bytes, no NUL, UTF-8 unless byte-names. Returns its data offset.
static uint32_t symlink_target(struct loader *L, uint32_t *count) {
  char q[QUOTE_LEN];
  uint64_t len = bytes_len(L, 1, M2_MAX_SYMLINK, "symlink target");
  const uint8_t *p = take(L, len);
  *count = (uint32_t)len;
  if (L->writing) return data_add(L, p, len, 1); // NUL-terminated: readlink replies with a C string
  if (memchr(p, 0, len) != NULL) fail(L, "symlink target %s contains NUL", quoted(p, len, q, sizeof q));
  if (!byte_names(L) && !utf8_ok(p, len)) fail(L, "symlink target %s %s", quoted(p, len, q, sizeof q), NOT_UTF8);
  L->data_max += len + 1;
  return 0;
}

static uint32_t inline_content(struct loader *L, uint64_t size, uint32_t *count) {
  if (!(L->in->features & M2L_INLINE)) fail(L, "has inline data but the manifest does not declare feature \"inline-data\"");
  uint64_t len = bytes_len(L, 0, M2_MAX_INLINE, "inline data");
  if (len != size) fail(L, "inline data is %llu bytes but size is %llu", (unsigned long long)len, (unsigned long long)size);
  *count = (uint32_t)len;
  if (L->writing) return data_add(L, take(L, len), len, 0);
  skip(L, len);
  L->data_max += len;
  return 0;
}

static void inode_record(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_RECORD;
  L->where_n = L->writing ? L->next_rank : L->n;
  uint64_t delta = varint(L, "ino");
  if (delta == 0) fail(L, "ino not above the previous INODE record's (inode numbers must ascend)");
  uint64_t ino = L->prev_ino + delta;
  if (ino > M2_VALUE_MAX) fail(L, "ino %llu is over 2^53 - 1", (unsigned long long)ino);
  L->prev_ino = ino;
  L->where = AT_INODE;
  L->where_n = ino;
  uint32_t rank = L->writing ? L->next_rank++ : L->n++;
  if (!L->writing && rank >= in->n_inodes) fail(L, "more INODE records than the trailer's %u", in->n_inodes);
  if (!L->writing) L->inos[rank] = ino;
  else if (rank >= L->n || L->inos[rank] != ino) changed(L);

  struct xt_inode o = {.ino = ino};
  uint64_t mode = varint(L, "mode");
  if ((mode & ~(uint64_t)(S_IFMT | 07777)) != 0 || !known_type(mode & S_IFMT))
    fail(L, "mode 0%llo is not a file type (regular, dir, symlink, fifo, char, block, socket) with permission bits", (unsigned long long)mode);
  unsigned type = (unsigned)(mode & S_IFMT);
  const char *kind = kind_name(KIND_OF(type));
  o.mode = (uint16_t)mode;
  o.uid = (uint32_t)varint_max(L, UINT32_MAX, "uid");
  o.gid = (uint32_t)varint_max(L, UINT32_MAX, "gid");
  o.nlink = (uint32_t)varint_max(L, UINT32_MAX, "nlink");
  if (o.nlink == 0) fail(L, "nlink must be an integer from 1 to %u, got 0", UINT32_MAX);
  o.size = varint(L, "size");
  o.blocks = varint(L, "blocks");
  static const char *const time_names[3] = {"atime", "mtime", "ctime"};
  int64_t *secs[3] = {&o.atime_sec, &o.mtime_sec, &o.ctime_sec};
  uint32_t *nsecs[3] = {&o.atime_nsec, &o.mtime_nsec, &o.ctime_nsec};
  for (int t = 0; t < 3; t++) {
    int64_t sec = L->prev_time[t] + zigzag(L, time_names[t]);
    if (sec > (int64_t)M2_VALUE_MAX || sec < -(int64_t)M2_VALUE_MAX) fail(L, "%s seconds %lld are beyond 2^53 - 1", time_names[t], (long long)sec);
    L->prev_time[t] = *secs[t] = sec;
    *nsecs[t] = u32le(L);
    if (*nsecs[t] > 999999999u) fail(L, "%s must be [seconds, nanoseconds] with 0 <= nanoseconds < 1e9, got %u nanoseconds", time_names[t], *nsecs[t]);
  }
  uint64_t has = varint(L, "has");
  if (has & ~(uint64_t)M2_HAS_ALL) fail(L, "unknown has bits 0x%llx", (unsigned long long)has);
  int device_node = type == S_IFCHR || type == S_IFBLK, file = type == S_IFREG;
  // rdev is optional on char and block devices, as in version 1.
  if ((has & M2_HAS_RDEV) && !device_node) fail(L, "a %s cannot have rdev (only char and block devices do)", kind);
  if (has & M2_HAS_RDEV) o.rdev = varint(L, "rdev");
  if ((has & M2_HAS_ATTRS) && !file && type != S_IFDIR) fail(L, "a %s cannot have attrs (only regular files and directories do)", kind);
  if (has & M2_HAS_ATTRS) {
    o.attrs = (uint32_t)varint_max(L, UINT32_MAX, "attrs");
    if (o.attrs == 0) fail(L, "attrs must be an integer from 1 to %u, got 0", UINT32_MAX);
  }
  if (has & M2_HAS_XATTRS) inode_xattrs(L, &o.xattr_first, &o.xattr_count);
  if ((has & M2_HAS_INLINE) && !file) fail(L, "a %s cannot have inline data (only regular files do)", kind);
  if (has & M2_HAS_INLINE) {
    o.first = inline_content(L, o.size, &o.count);
    o.flags = XT_INLINE;
  } else if (file) {
    o.count = file_extents(L, o.size, &o.first);
  } else if (type == S_IFLNK) {
    o.first = symlink_target(L, &o.count);
  }
  if (!L->writing) {
    L->flags[rank] = (uint8_t)KIND_OF(type);
    L->blocks512 += o.blocks;
    if (file && !(has & M2_HAS_INLINE)) L->extents += o.count;
    return;
  }
  uint32_t index = rank_to_index(L, rank);
  if (kind_of(L, index) != KIND_OF(type)) changed(L);
  if (type == S_IFDIR) dir_range_of(L, index, &o.first, &o.count);
  o.parent = L->parent[index];
  put(L, &L->inodes, L->h->inodes_off + (uint64_t)index * sizeof o, &o, sizeof o);
}

// ------------------------------------------------------------------------------------- passes

static void scan(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->w.pos = in->body_start;
  L->inodes_at = in->body_end;
  while (L->w.pos < L->w.end) {
    uint64_t at = L->w.pos;
    L->where = AT_BODY;
    uint8_t tag = byte(L);
    if (tag == M2_TAG_DIR) {
      if (L->inodes_at != in->body_end) fail(L, "a DIR record at byte %llu after an INODE record (DIR records come first)", (unsigned long long)at);
      dir_record(L);
    } else if (tag == M2_TAG_INODE) {
      if (L->inodes_at == in->body_end) L->inodes_at = at;
      inode_record(L);
    } else {
      fail(L, "unknown record tag 0x%02x at byte %llu", tag, (unsigned long long)at);
    }
  }
  L->where = AT_BODY;
  if (L->n != in->n_inodes) fail(L, "the trailer says %u INODE records, the body has %u", in->n_inodes, L->n);
  if (L->dirs != in->n_dirs) fail(L, "the trailer says %u DIR records, the body has %llu", in->n_dirs, (unsigned long long)L->dirs);
  if (L->entries != in->n_entries)
    fail(L, "the trailer says %llu directory entries, the body has %llu", (unsigned long long)in->n_entries, (unsigned long long)L->entries);
}

// The root: an inode, a directory, at index 0.
static void place_root(struct loader *L) {
  L->where = AT_BODY;
  int64_t r = index_of(L, L->in->root); // root_rank is still 0: the index is the rank
  if (r < 0) fail(L, "root inode %llu is missing from the inode list", (unsigned long long)L->in->root);
  if ((L->flags[r] & F_KIND) != KIND_OF(S_IFDIR))
    fail(L, "root inode %llu is a %s, not a dir", (unsigned long long)L->in->root, kind_name(L->flags[r] & F_KIND));
  L->root_rank = (uint32_t)r;
  uint8_t f = L->flags[0];
  L->flags[0] = L->flags[r];
  L->flags[r] = f;
}

static uint64_t align8(uint64_t x) {
  return (x + 7) & ~(uint64_t)7;
}

// Sections sized from pass 1, the file sized to hold them (the data blob at its most, before sharing)
// and mapped.
static void map_tables(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_BODY;
  if (L->entries > UINT32_MAX || L->extents > UINT32_MAX || L->xattrs > UINT32_MAX || L->copies > UINT32_MAX || L->names_size > UINT32_MAX)
    fail(L, "too many entries, extents, xattrs or copies, or names over 4 GiB, for the tables (u32 indexes)");
  uint64_t off = align8(sizeof(struct xt_header));
  uint64_t inodes_off = off, dirents_off, extents_off, xattrs_off, copies_off, devices_off, names_off, data_off;
  off = dirents_off = align8(off + (uint64_t)L->n * sizeof(struct xt_inode));
  off = extents_off = align8(off + L->entries * sizeof(struct xt_dirent));
  off = xattrs_off = align8(off + L->extents * sizeof(struct xt_extent));
  off = copies_off = align8(off + L->xattrs * sizeof(struct xt_xattr));
  off = devices_off = align8(off + L->copies * sizeof(struct xt_copy));
  off = names_off = align8(off + (uint64_t)in->n_devices * sizeof(struct xt_device));
  off = data_off = align8(off + L->names_size);
  L->map_len = align8(off + L->data_max);
  // Space reserved now: a full disk is an error here, not a SIGBUS when a page is written.
  int err = ftruncate(in->tables_fd, 0) != 0 ? errno : posix_fallocate(in->tables_fd, 0, (off_t)L->map_len);
  if (err == EOPNOTSUPP || err == EINVAL) err = ftruncate(in->tables_fd, (off_t)L->map_len) != 0 ? errno : 0;
  if (err != 0) fail(L, "cannot make the tables file %llu bytes: %s", (unsigned long long)L->map_len, strerror(err));
  void *map = mmap(NULL, L->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, in->tables_fd, 0);
  if (map == MAP_FAILED) fail(L, "cannot map the tables file: %s", strerror(errno));
  L->map = map;
  L->h = map;
  *L->h = (struct xt_header){
    .magic = XT_MAGIC, .version = XT_VERSION, .n_inodes = L->n, .n_dirents = (uint32_t)L->entries, .n_extents = (uint32_t)L->extents,
    .n_xattrs = (uint32_t)L->xattrs, .n_devices = in->n_devices, .block_size = in->block_size, .inodes_off = inodes_off, .dirents_off = dirents_off,
    .extents_off = extents_off, .xattrs_off = xattrs_off, .devices_off = devices_off, .names_off = names_off, .names_size = L->names_size,
    .data_off = data_off, .n_copies = (uint32_t)L->copies, .csum_alg = in->csum_alg, .csum_size = in->csum_size, .sector_size = in->sector_size,
    .copies_off = copies_off};
  L->dirents = (struct xt_dirent *)(L->map + dirents_off);
  L->names = (char *)(L->map + names_off);
  struct xt_device *dev = (struct xt_device *)(L->map + devices_off);
  for (uint32_t i = 0; i < in->n_devices; i++) dev[i] = (struct xt_device){.fd = -1, .size = in->device_sizes[i]};
}

// The tables' pages written so far, out of this process's resident set (they stay in the page cache,
// dirty until written back): the mapping never keeps the whole image resident.
static void drop_pages(struct loader *L) {
  if (L->n_dirents - L->dropped_at < DROP_EVERY) return;
  madvise(L->map, L->map_len, MADV_DONTNEED);
  L->dropped_at = L->n_dirents;
}

static void write_dirs(struct loader *L) {
  L->writing = 1;
  L->w.pos = L->in->body_start;
  while (L->w.pos < L->inodes_at) {
    drop_pages(L);
    if (byte(L) != M2_TAG_DIR) changed(L); // pass 1 found one here
    dir_record(L);
  }
  madvise(L->map, L->map_len, MADV_DONTNEED);
  qsort(L->dir_ranges, L->n_dir_ranges, sizeof *L->dir_ranges, dir_range_cmp);
}

static void write_inodes(struct loader *L) {
  L->w.pos = L->inodes_at;
  L->next_rank = 0;
  L->prev_ino = 0;
  L->prev_time[0] = L->prev_time[1] = L->prev_time[2] = 0;
  L->cursor = 0;
  while (L->w.pos < L->w.end) {
    if (byte(L) != M2_TAG_INODE) changed(L);
    inode_record(L);
  }
  struct appender *all[] = {&L->inodes, &L->extentv, &L->xattrv, &L->copyv, &L->data};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) flush(L, all[i]);
}

// The header's remaining fields; the file cut to the image's size.
static void finish_tables(struct loader *L) {
  struct xt_header *h = L->h;
  L->where = AT_BODY;
  if (L->next_rank != L->n || L->n_dirents != L->entries || L->n_extents != L->extents || L->n_xattrs != L->xattrs || L->n_copies != L->copies ||
      L->n_names != L->names_size)
    changed(L); // or a bug: passes 2 and 3 wrote other counts than pass 1 found
  h->data_size = L->n_data;
  h->total_size = align8(h->data_off + L->n_data);
  uint64_t bsize = L->in->block_size;
  unsigned __int128 blocks = (L->blocks512 * 512 + bsize - 1) / bsize;
  h->sf_bsize = h->sf_frsize = bsize;
  h->sf_blocks = blocks > UINT64_MAX ? UINT64_MAX : (uint64_t)blocks;
  h->sf_files = L->n;
  h->sf_namemax = M2_MAX_NAME;
}

static void *alloc(struct loader *L, size_t n, size_t size) {
  void *p = calloc(n > 0 ? n : 1, size);
  if (p == NULL) fail(L, "out of memory (%zu bytes)", n * size);
  L->heap += n * size;
  return p;
}

// The trailer's counts bound what is allocated before the body is read.
static void check_counts(struct loader *L) {
  const struct m2_load_in *in = L->in;
  L->where = AT_BODY;
  if (in->body_start > in->body_end) fail(L, "the body ends before it starts");
  if (in->n_inodes > M2_MAX_INODES) fail(L, "the trailer counts %u inodes, over the limit of %u", in->n_inodes, M2_MAX_INODES);
  if (in->n_dirs > in->n_inodes) fail(L, "the trailer counts %u DIR records but only %u inodes", in->n_dirs, in->n_inodes);
  // An entry takes 3 bytes at least (a name length, a name byte, a child).
  if (in->n_entries > (in->body_end - in->body_start) / 3)
    fail(L, "the trailer counts %llu directory entries, more than the body's %llu bytes can hold", (unsigned long long)in->n_entries,
         (unsigned long long)(in->body_end - in->body_start));
  if (in->n_devices > 0 && in->device_sizes == NULL) fail(L, "device sizes missing");
  if (in->csum_alg != XT_CSUM_NONE && (in->sector_size == 0 || in->csum_size == 0)) fail(L, "data checksums without a sector or checksum size");
  if ((in->features & M2L_CHECKSUMS) && in->csum_alg == XT_CSUM_NONE) fail(L, "feature data-checksums without an algorithm");
}

static void release(struct loader *L) {
  if (L->map != NULL) munmap(L->map, L->map_len);
  free(L->w.buf);
  free(L->inos);
  free(L->flags);
  free(L->parent);
  free(L->dedup);
  free(L->xnames);
  free(L->xname_off);
  free(L->xname_len);
  free(L->xvalue_off);
  free(L->xvalue_len);
  free(L->dir_ranges);
  free(L->scratch);
  free(L->inodes.buf);
  free(L->extentv.buf);
  free(L->xattrv.buf);
  free(L->copyv.buf);
  free(L->data.buf);
}

int m2_load(const struct m2_load_in *in, struct m2_load_out *out, char *msg, size_t msg_len) {
  struct loader *L = calloc(1, sizeof *L);
  if (L == NULL) return snprintf(msg, msg_len, "out of memory"), -1;
  L->in = in;
  L->msg = msg;
  L->msg_len = msg_len;
  L->w = (struct window){.fd = in->manifest_fd, .end = in->body_end};
  L->device_ends = out->device_ends;
  if (setjmp(L->fail) != 0) {
    release(L);
    free(L);
    return -1;
  }
  check_counts(L);
  for (uint32_t i = 0; i < in->n_devices; i++) L->device_ends[i] = 0;
  L->w.buf = alloc(L, READ_WINDOW, 1);
  L->inos = alloc(L, in->n_inodes, sizeof *L->inos);
  L->flags = alloc(L, in->n_inodes, 1);
  L->xnames = alloc(L, M2_MAX_XATTR_LIST + M2_MAX_NAME + 1, 1);
  L->xname_off = alloc(L, XATTRS_MAX, sizeof *L->xname_off);
  L->xname_len = alloc(L, XATTRS_MAX, sizeof *L->xname_len);
  L->xvalue_off = alloc(L, XATTRS_MAX * 2, sizeof *L->xvalue_off); // doubles as the name sort's scratch
  L->xvalue_len = alloc(L, XATTRS_MAX, sizeof *L->xvalue_len);
  scan(L);
  place_root(L);
  L->parent = alloc(L, L->n, sizeof *L->parent);
  memset(L->parent, 0xff, (size_t)L->n * sizeof *L->parent); // NO_PARENT
  L->dedup = alloc(L, DEDUP_SLOTS, sizeof *L->dedup);
  L->dir_ranges = alloc(L, in->n_dirs, sizeof *L->dir_ranges);
  L->scratch = alloc(L, SCRATCH_BYTES, 1);
  struct appender *all[] = {&L->inodes, &L->extentv, &L->xattrv, &L->copyv, &L->data};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) all[i]->buf = alloc(L, APPEND_BYTES, 1);
  map_tables(L);
  write_dirs(L);
  check_tree(L);
  write_inodes(L);
  finish_tables(L);
  *out = (struct m2_load_out){
    .tables_bytes = L->h->total_size, .n_inodes = L->n, .n_dirents = (uint32_t)L->n_dirents, .n_extents = (uint32_t)L->n_extents,
    .n_xattrs = (uint32_t)L->n_xattrs, .n_copies = (uint32_t)L->n_copies, .names_size = L->n_names, .data_size = L->n_data,
    .device_ends = L->device_ends, .heap_bytes = L->heap};
  uint64_t total = L->h->total_size;
  release(L); // unmaps: what was written is in the file
  L->map = NULL;
  int err = ftruncate(in->tables_fd, (off_t)total) != 0 ? errno : 0;
  free(L);
  if (err != 0) return snprintf(msg, msg_len, "cannot cut the tables file to %llu bytes: %s", (unsigned long long)total, strerror(err)), -1;
  return 0;
}

// ------------------------------------------------------------------------------------- lookups

// The rank of the root (index 0): the last index from 1 on holding a smaller inode number (m2_load
// put the smallest there), 0 when there is none.
static uint32_t root_rank_of(const struct xt_inode *inodes, uint32_t n) {
  uint64_t root = inodes[0].ino;
  uint32_t lo = 1, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (inodes[mid].ino < root) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

static uint64_t ino_at_rank(const struct xt_inode *inodes, uint32_t root_rank, uint32_t rank) {
  return inodes[rank == root_rank ? 0 : rank == 0 ? root_rank : rank].ino;
}

int m2_in_rank_order(const struct xt_inode *inodes, uint32_t n) {
  uint32_t p = root_rank_of(inodes, n);
  for (uint32_t r = 1; r < n; r++)
    if (ino_at_rank(inodes, p, r - 1) >= ino_at_rank(inodes, p, r)) return 0;
  return 1;
}

int64_t m2_index_of(const struct xt_inode *inodes, uint32_t n, uint64_t ino) {
  uint32_t p = root_rank_of(inodes, n), lo = 0, hi = n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    uint64_t v = ino_at_rank(inodes, p, mid);
    if (v == ino) return mid == p ? 0 : mid == 0 ? p : mid;
    if (v < ino) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}
