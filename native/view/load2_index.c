// The version 2 loader (load2_internal.h): inode numbers by rank, table indexes (the root swapped to
// index 0) and the lookups of loaded tables (m2_in_rank_order, m2_index_of).
#include "load2_internal.h"

uint32_t m2l_rank_to_index(const struct loader *L, uint32_t rank) {
  return rank == L->root_rank ? 0 : rank == 0 ? L->root_rank : rank;
}

uint64_t m2l_ino_of_index(const struct loader *L, uint32_t index) {
  return L->inos[m2l_rank_to_index(L, index)]; // the swap is its own inverse
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
int64_t m2l_index_of(struct loader *L, uint64_t ino) {
  int64_t rank = rank_of(L, ino);
  return rank < 0 ? -1 : (int64_t)m2l_rank_to_index(L, (uint32_t)rank);
}

unsigned m2l_kind_of(const struct loader *L, uint32_t index) {
  return L->flags[index] & F_KIND;
}

const char *m2l_kind_name(unsigned kind) {
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
