// libFuzzer target: the v2 manifest body as the view's loader receives it (native/view/load2.c), with
// the header's facts and the trailer's counts the fuzzer chooses too. A body m2_load accepts must
// give tables that xt_check accepts (what the engine then trusts), in the order m2_index_of relies on
// (every inode found again by its number), each directory's entries sorted strictly by name bytes.
// A refusal must be one line. The tables are then read as c-tables reads them.
//
// Input: u8 features (M2L_*) | u8 devices (at most 4) | u64 size per device | u64 root | u32 inodes |
// u32 dirs | u64 entries | the body (little-endian). With M2L_CHECKSUMS: crc32c, 4096-byte sectors.
// Seeds: fuzz/corpus/c-load2/ (scripts/fuzz's c-seeds writes them from the corpus manifests).
#include "plan-check.h"
#include "load2.h"
#include "../csum.h"

#include <sys/mman.h>
#include <unistd.h>

static uint64_t le(const uint8_t *p, unsigned n) {
  uint64_t v = 0;
  for (unsigned i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static int memfd_with(const uint8_t *data, size_t size) {
  int fd = memfd_create("fuzz", MFD_CLOEXEC);
  REQUIRE(fd >= 0, "memfd_create", fd, 0);
  REQUIRE(write(fd, data, size) == (ssize_t)size, "write", size, 0);
  return fd;
}

static int dirent_order(const struct xt_tables *t, const struct xt_dirent *a, const struct xt_dirent *b) {
  int c = memcmp(t->names + a->name_off, t->names + b->name_off, a->name_len < b->name_len ? a->name_len : b->name_len);
  return c != 0 ? c : (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

static void check_loaded(int tables_fd, const struct m2_load_out *out) {
  off_t len = lseek(tables_fd, 0, SEEK_END);
  REQUIRE(len == (off_t)out->tables_bytes, "tables file size differs from the image's", len, out->tables_bytes);
  void *image = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, tables_fd, 0);
  REQUIRE(image != MAP_FAILED, "mmap", len, 0);
  struct xt_tables t;
  const char *bad = xt_check(image, (uint64_t)len, &t);
  if (bad != NULL) fprintf(stderr, "fuzz: xt_check refuses what m2_load wrote: %s\n", bad), abort();
  uint32_t n = t.h->n_inodes;
  REQUIRE(m2_in_rank_order(t.inodes, n), "inodes not in rank order", n, 0);
  for (uint32_t i = 0; i < n; i++) {
    REQUIRE(m2_index_of(t.inodes, n, t.inodes[i].ino) == i, "an inode not found by its number", i, t.inodes[i].ino);
    const struct xt_inode *d = &t.inodes[i];
    if (!S_ISDIR(d->mode)) continue;
    for (uint32_t k = 1; k < d->count; k++)
      REQUIRE(dirent_order(&t, &t.dirents[d->first + k - 1], &t.dirents[d->first + k]) < 0, "entries not strictly sorted", i, k);
  }
  for (uint32_t i = 0, files = 0; i < n && files < 16; i++) {
    const struct xt_inode *node = &t.inodes[i];
    if (!S_ISREG(node->mode)) continue;
    files++;
    struct plan_bounds b = {.h = t.h, .ext = t.extents + node->first, .count = node->flags & XT_INLINE ? 0 : node->count, .copies = t.copies,
                            .n_copies = t.h->n_copies, .csums = t.data, .csums_size = t.h->data_size, .n_devices = t.h->n_devices};
    check_reads(&t, i, NULL, &b, 0, 8192);
  }
  munmap(image, (size_t)len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  unsigned n_dev = data[1];
  size_t fixed = 2 + 8 * (size_t)n_dev + 8 + 4 + 4 + 8;
  if (n_dev > 4 || size < fixed) return 0;
  uint64_t sizes[4];
  for (unsigned i = 0; i < n_dev; i++) {
    sizes[i] = le(data + 2 + 8 * i, 8);
    if (sizes[i] == 0 || sizes[i] > ((uint64_t)1 << 53) - 1) return 0; // the header's validator refuses these
  }
  const uint8_t *p = data + 2 + 8 * n_dev;
  struct m2_load_in in = {
    .n_devices = n_dev, .device_sizes = sizes, .features = data[0] & 15u, .root = le(p, 8), .n_inodes = (uint32_t)le(p + 8, 4),
    .n_dirs = (uint32_t)le(p + 12, 4), .n_entries = le(p + 16, 8), .block_size = 4096, .body_start = 0, .body_end = size - fixed};
  if (in.root == 0 || in.root > ((uint64_t)1 << 53) - 1) return 0; // checkRoot refuses it
  if (in.features & M2L_CHECKSUMS) in.csum_alg = XT_CSUM_CRC32C, in.csum_size = 4, in.sector_size = 4096;
  in.manifest_fd = memfd_with(data + fixed, size - fixed);
  in.tables_fd = memfd_create("tables", MFD_CLOEXEC);
  uint64_t ends[4];
  struct m2_load_out out = {.device_ends = ends};
  char msg[512];
  if (m2_load(&in, &out, msg, sizeof msg) == 0) check_loaded(in.tables_fd, &out);
  else REQUIRE(msg[0] != 0 && strchr(msg, '\n') == NULL, "a refusal is not one line", strlen(msg), 0);
  close(in.manifest_fd);
  close(in.tables_fd);
  return 0;
}
