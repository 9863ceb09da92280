// The version 2 loader (load2_internal.h): sections appended through buffers (pwrite), and the data
// blob, identical values shared through a bounded cache.
#include "load2_internal.h"

static uint64_t hash_bytes(const uint8_t *p, uint64_t len, int nul) {
  uint64_t h = 0xcbf29ce484222325u ^ (uint64_t)nul;
  for (uint64_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3u;
  return h ^ len;
}

static void write_all(struct loader *L, const void *p, uint64_t len, uint64_t at) {
  for (uint64_t done = 0; done < len;) {
    ssize_t n = pwrite(L->in->tables_fd, (const char *)p + done, len - done, (off_t)(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) m2l_fail(L, "cannot write the tables file: %s", n < 0 ? strerror(errno) : "no progress");
    done += (uint64_t)n;
  }
}

void m2l_flush(struct loader *L, struct appender *a) {
  write_all(L, a->buf, a->len, a->at);
  a->at += a->len;
  a->len = 0;
}

// `len` bytes for file offset `at`: buffered when they continue what is buffered.
void m2l_put(struct loader *L, struct appender *a, uint64_t at, const void *p, uint64_t len) {
  if (at != a->at + a->len || a->len + len > APPEND_BYTES) {
    m2l_flush(L, a);
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
    if (got <= 0) m2l_fail(L, "cannot read the %s: %s", what, got < 0 ? strerror(errno) : "short read");
    done += (uint64_t)got;
  }
}

// Append `len` bytes (and a NUL when `nul`) to the data blob, unshared.
uint32_t m2l_data_put(struct loader *L, const uint8_t *p, uint64_t len, int nul) {
  uint64_t total = len + (nul ? 1 : 0);
  if (L->n_data + total > UINT32_MAX) m2l_fail(L, "the tables' data blob passes 4 GiB (u32 offsets)");
  if (total > L->data_max - L->n_data) m2l_changed(L);
  uint32_t off = (uint32_t)L->n_data;
  static const uint8_t zero = 0;
  m2l_put(L, &L->data, L->h->data_off + off, p, len);
  if (nul) m2l_put(L, &L->data, L->h->data_off + off + len, &zero, 1);
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
uint32_t m2l_data_add(struct loader *L, const uint8_t *p, uint64_t len, int nul) {
  uint64_t hash = hash_bytes(p, len, nul);
  struct dedup_slot *s = &L->dedup[hash & (DEDUP_SLOTS - 1)];
  uint64_t total = len + (nul ? 1 : 0);
  if (s->hash == hash && s->len == total && data_equals(L, s->off, total, p, len, nul)) return s->off;
  uint32_t off = m2l_data_put(L, p, len, nul);
  *s = (struct dedup_slot){.hash = hash, .off = off, .len = (uint32_t)total};
  return off;
}

// `len` bytes of the manifest at file offset `at` appended to the data blob, unshared (checksums).
uint32_t m2l_data_copy(struct loader *L, uint64_t at, uint64_t len) {
  if (L->n_data + len > UINT32_MAX) m2l_fail(L, "the tables' data blob passes 4 GiB (u32 offsets)");
  if (len > L->data_max - L->n_data) m2l_changed(L);
  uint32_t off = (uint32_t)L->n_data;
  for (uint64_t done = 0; done < len;) {
    uint64_t n = len - done < SCRATCH_BYTES ? len - done : SCRATCH_BYTES;
    read_exact(L, L->w.fd, L->scratch, n, at + done, "manifest");
    m2l_put(L, &L->data, L->h->data_off + off + done, L->scratch, n);
    done += n;
  }
  L->n_data += len;
  return off;
}
