// The version 2 loader (load2_internal.h): failing with one line naming the problem, reading the body
// through its window, and the checks of names (what validate.ts refuses).
#include "load2_internal.h"

static const char *where_prefix(struct loader *L, char *buf, size_t len) {
  if (L->where == AT_INODE) snprintf(buf, len, "inode %llu: ", (unsigned long long)L->where_n);
  else if (L->where == AT_RECORD) snprintf(buf, len, "INODE record %llu: ", (unsigned long long)L->where_n);
  else snprintf(buf, len, "manifest: ");
  return buf;
}

__attribute__((format(printf, 2, 3), noreturn)) void m2l_fail(struct loader *L, const char *fmt, ...) {
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
__attribute__((noreturn)) void m2l_changed(struct loader *L) {
  L->where = AT_BODY;
  m2l_fail(L, "the manifest changed while it was read");
}

// A name for a message: JSON-quoted, bytes outside printable ASCII as \xNN (as validate.ts quote()
// shows bytes that are not UTF-8), cut after 80 bytes. Into `out` (at least 340 bytes).
const char *m2l_quoted(const uint8_t *p, uint64_t len, char *out, size_t out_len) {
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

void m2l_progress(struct loader *L) {
  const struct m2_load_in *in = L->in;
  uint64_t body = in->body_end - in->body_start;
  if (in->progress) in->progress(in->progress_ctx, L->read_before + (L->w.pos - in->body_start), 2 * body, L->next_rank);
}

void m2l_fill(struct loader *L, uint64_t want) {
  struct window *w = &L->w;
  m2l_progress(L);
  uint64_t n = w->end - w->pos < READ_WINDOW ? w->end - w->pos : READ_WINDOW;
  if (n < want) m2l_fail(L, "a record runs past the end of the body (truncated)");
  w->at = w->pos;
  w->len = 0;
  while (w->len < n) {
    ssize_t got = pread(w->fd, w->buf + w->len, n - w->len, (off_t)(w->at + w->len));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) m2l_fail(L, "cannot read the manifest: %s", got < 0 ? strerror(errno) : "it is shorter than its trailer says");
    w->len += (uint32_t)got;
  }
}

int m2l_byte_names(struct loader *L) {
  return (L->in->features & M2L_BYTE_NAMES) != 0;
}

const char *const m2l_NOT_UTF8 = "holds bytes that are not UTF-8 but the manifest does not declare feature \"byte-names\"";

// A directory entry's name: what validate.ts entryNameProblem refuses.
const char *m2l_entry_name_problem(struct loader *L, const uint8_t *p, uint64_t len) {
  if (len == 0) return "is empty";
  if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) return "is reserved";
  if (memchr(p, '/', len) != NULL) return "contains \"/\"";
  if (memchr(p, 0, len) != NULL) return "contains NUL";
  if (!m2l_byte_names(L) && !m2_valid_utf8(p, len)) return m2l_NOT_UTF8;
  return NULL;
}

// What validate.ts xattrNameProblem refuses.
const char *m2l_xattr_name_problem(struct loader *L, const uint8_t *p, uint64_t len) {
  static const char *const prefixes[] = {"user.", "trusted.", "security.", "system.", "btrfs."};
  if (!m2l_byte_names(L) && !m2_valid_utf8(p, len)) return m2l_NOT_UTF8;
  if (len == 0) return "is empty";
  if (memchr(p, 0, len) != NULL) return "contains NUL";
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t pl = strlen(prefixes[i]);
    if (len >= pl && memcmp(p, prefixes[i], pl) == 0) return len > pl ? NULL : "has nothing after its namespace";
  }
  return "must start with user., trusted., security., system., btrfs.";
}

// A `bytes` field's length, checked against [min, max] (max at most READ_WINDOW / 2 unless skipped).
uint64_t m2l_bytes_len(struct loader *L, uint64_t min, uint64_t max, const char *what) {
  uint64_t len = varint(L, what);
  if (len < min || len > max) {
    if (len > max) m2l_fail(L, "%s is %llu bytes, over the limit of %llu", what, (unsigned long long)len, (unsigned long long)max);
    m2l_fail(L, "%s is empty", what);
  }
  return len;
}

// Tables order: memcmp, then the shorter first.
int m2l_name_cmp(const void *a, uint32_t alen, const void *b, uint32_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  return c != 0 ? c : (alen > blen) - (alen < blen);
}
