// The version 2 loader (load2_internal.h): DIR records, checked in pass 1 and written in pass 2 as
// dirents and names, each directory sorted by name bytes; a parent per inode; then the tree.
#include "load2_internal.h"

__thread const char *m2l_sort_names; // qsort's comparator has no context argument in C11

static int dirent_cmp(const void *a, const void *b) {
  const struct xt_dirent *x = a, *y = b;
  return m2l_name_cmp(m2l_sort_names + x->name_off, x->name_len, m2l_sort_names + y->name_off, y->name_len);
}

// Each directory other than the root is entered exactly once and no entry names the root; every
// other inode gets the first directory naming it as its parent.
static void link_children(struct loader *L, uint32_t dir, uint32_t first, uint32_t count) {
  char q[QUOTE_LEN];
  for (uint32_t k = first; k < first + count; k++) {
    const struct xt_dirent *d = &L->dirents[k];
    uint32_t c = d->child;
    const uint8_t *name = (const uint8_t *)L->names + d->name_off;
    if (c == 0) m2l_fail(L, "entry %s points back at the root directory (a cycle)", m2l_quoted(name, d->name_len, q, sizeof q));
    if (m2l_kind_of(L, c) == KIND_OF(S_IFDIR) && L->parent[c] != NO_PARENT) {
      if (L->parent[c] == dir)
        m2l_fail(L, "directory %llu has two parents: it is entered twice here, the second time as %s", (unsigned long long)m2l_ino_of_index(L, c),
             m2l_quoted(name, d->name_len, q, sizeof q));
      L->where_n = m2l_ino_of_index(L, c);
      m2l_fail(L, "directory has two parents: inode %llu and inode %llu (entry %s)", (unsigned long long)m2l_ino_of_index(L, L->parent[c]),
           (unsigned long long)m2l_ino_of_index(L, dir), m2l_quoted(name, d->name_len, q, sizeof q));
    }
    if (L->parent[c] == NO_PARENT) L->parent[c] = dir;
  }
}

// A DIR record: checked in pass 1; written as dirents, sorted and linked in pass 2.
void m2l_dir_record(struct loader *L) {
  char q[QUOTE_LEN];
  L->where = AT_BODY;
  uint64_t dir_ino = varint(L, "DIR record: directory inode");
  if (dir_ino == 0) m2l_fail(L, "DIR record names inode 0");
  L->where = AT_INODE;
  L->where_n = dir_ino;
  uint64_t n = varint(L, "entries");
  if (n > M2_MAX_ENTRIES_PER_DIR) m2l_fail(L, "%llu entries, over the limit of %u", (unsigned long long)n, M2_MAX_ENTRIES_PER_DIR);
  uint32_t dir = 0, first = (uint32_t)L->n_dirents;
  if (!L->writing) {
    if (++L->dirs > L->in->n_dirs) m2l_fail(L, "more DIR records than the trailer's %u", L->in->n_dirs);
    L->entries += n;
    if (L->entries > L->in->n_entries) m2l_fail(L, "more directory entries than the trailer's %llu", (unsigned long long)L->in->n_entries);
  } else {
    int64_t at = m2l_index_of(L, dir_ino);
    if (at < 0) m2l_fail(L, "has a DIR record but no INODE record");
    dir = (uint32_t)at;
    if (m2l_kind_of(L, dir) != KIND_OF(S_IFDIR)) m2l_fail(L, "is a %s, not a dir, but has a DIR record", m2l_kind_name(m2l_kind_of(L, dir)));
    if (L->flags[dir] & F_DIR_RECORD) m2l_fail(L, "has two DIR records");
    L->flags[dir] |= F_DIR_RECORD;
  }
  int64_t child = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = m2l_bytes_len(L, 0, M2_MAX_NAME, "entry name");
    const uint8_t *name = take(L, len);
    const char *problem = L->writing ? NULL : m2l_entry_name_problem(L, name, len);
    if (problem != NULL) m2l_fail(L, "entry %s %s", m2l_quoted(name, len, q, sizeof q), problem);
    int64_t delta = zigzag(L, "entry ino");
    child += delta;
    if (child < 1 || child > (int64_t)M2_VALUE_MAX)
      m2l_fail(L, "entry %s has ino %lld, not a positive integer", m2l_quoted(name, len, q, sizeof q), (long long)child);
    if (!L->writing) {
      L->names_size += len + 1;
      continue;
    }
    int64_t c = m2l_index_of(L, (uint64_t)child);
    if (c < 0) m2l_fail(L, "entry %s points at inode %lld, which does not exist", m2l_quoted(name, len, q, sizeof q), (long long)child);
    if (L->n_dirents >= L->entries || len + 1 > L->names_size - L->n_names) m2l_changed(L);
    memcpy(L->names + L->n_names, name, len);
    L->names[L->n_names + len] = 0;
    L->dirents[L->n_dirents++] = (struct xt_dirent){.name_off = (uint32_t)L->n_names, .child = (uint32_t)c, .name_len = (uint16_t)len};
    L->n_names += len + 1;
  }
  if (!L->writing) return;
  m2l_sort_names = L->names;
  qsort(L->dirents + first, n, sizeof *L->dirents, dirent_cmp);
  for (uint32_t k = first + 1; k < first + n; k++) {
    const struct xt_dirent *a = &L->dirents[k - 1], *b = &L->dirents[k];
    if (dirent_cmp(a, b) == 0) m2l_fail(L, "entry %s appears twice", m2l_quoted((const uint8_t *)L->names + b->name_off, b->name_len, q, sizeof q));
  }
  link_children(L, dir, first, (uint32_t)n);
  if (L->n_dir_ranges >= L->in->n_dirs) m2l_changed(L);
  L->dir_ranges[L->n_dir_ranges++] = (struct dir_range){.index = dir, .first = first, .count = (uint32_t)n};
}

// Every inode but the root has a parent, and every directory reaches the root through its parents:
// with one parent each, a directory that does not is in a cycle cut off from the root.
void m2l_check_tree(struct loader *L) {
  L->where = AT_INODE;
  for (uint32_t i = 1; i < L->n; i++) {
    if (L->parent[i] != NO_PARENT) continue;
    L->where_n = m2l_ino_of_index(L, i);
    m2l_fail(L, "is not reachable from the root (an orphan)");
  }
  L->parent[0] = 0; // the root names itself
  L->flags[0] |= F_ROOTED;
  for (uint32_t i = 1; i < L->n; i++) {
    if (m2l_kind_of(L, i) != KIND_OF(S_IFDIR) || (L->flags[i] & F_ROOTED)) continue;
    uint32_t j = i;
    while (!(L->flags[j] & (F_ROOTED | F_WALKING))) {
      L->flags[j] |= F_WALKING;
      j = L->parent[j];
    }
    if (!(L->flags[j] & F_ROOTED)) {
      L->where_n = m2l_ino_of_index(L, j);
      m2l_fail(L, "is not reachable from the root: its directory is its own ancestor (a cycle)");
    }
    for (j = i; !(L->flags[j] & F_ROOTED); j = L->parent[j]) L->flags[j] = (uint8_t)((L->flags[j] & ~F_WALKING) | F_ROOTED);
  }
}

// The tables' pages written so far, out of this process's resident set (they stay in the page cache,
// dirty until written back): the mapping never keeps the whole image resident.
static int dir_range_cmp(const void *a, const void *b) {
  const struct dir_range *x = a, *y = b;
  return (x->index > y->index) - (x->index < y->index);
}

static void drop_pages(struct loader *L) {
  if (L->n_dirents - L->dropped_at < DROP_EVERY) return;
  madvise(L->map, L->map_len, MADV_DONTNEED);
  L->dropped_at = L->n_dirents;
}

void m2l_write_dirs(struct loader *L) {
  L->writing = 1;
  L->w.pos = L->in->body_start;
  while (L->w.pos < L->inodes_at) {
    drop_pages(L);
    if (byte(L) != M2_TAG_DIR) m2l_changed(L); // pass 1 found one here
    m2l_dir_record(L);
  }
  madvise(L->map, L->map_len, MADV_DONTNEED);
  qsort(L->dir_ranges, L->n_dir_ranges, sizeof *L->dir_ranges, dir_range_cmp);
}

// Directory `index`'s dirents, as pass 2 wrote them (none without a DIR record): a binary search
// over the ranges, sorted by index after pass 2 (12 bytes per directory).
void m2l_dir_range_of(struct loader *L, uint32_t index, uint32_t *first, uint32_t *count) {
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

