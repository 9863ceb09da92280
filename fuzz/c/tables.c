// libFuzzer target: the view tables as mount() receives them (native/view/tables.h), checked by
// xt_check (check.c); tables it accepts are then read the way the engine reads them: every read
// planned (plan.c) and checked against a linear model and the bounds read.c relies on, and every
// name, target and xattr that ops.c serves asserted inside the image.
//
// Input: u64 offset | u64 size (little-endian: one read the fuzzer chooses, besides the fixed ones)
// | the table image. Seeds: fuzz/corpus/c-tables/ (scripts/fuzz-seeds packs them from manifests).
#include "plan-check.h"

// What ops.c touches for every inode: names (lookup, readdir), symlink targets (readlink), xattr
// names, values and the listxattr span. xt_check promises all of it lies in the image.
static void check_ops(const struct xt_tables *t) {
  const struct xt_header *h = t->h;
  for (uint32_t i = 0; i < h->n_inodes; i++) {
    const struct xt_inode *n = &t->inodes[i];
    REQUIRE(n->parent < h->n_inodes, "parent out of range", i, n->parent);
    if (S_ISDIR(n->mode)) {
      REQUIRE(inside(t->dirents + n->first, (uint64_t)n->count * sizeof *t->dirents, t->dirents, (uint64_t)h->n_dirents * sizeof *t->dirents),
              "dirents outside their section", n->first, n->count);
      for (uint32_t k = 0; k < n->count; k++) {
        const struct xt_dirent *d = &t->dirents[n->first + k];
        REQUIRE(d->child < h->n_inodes, "dirent child out of range", d->child, h->n_inodes);
        REQUIRE(inside(t->names + d->name_off, (uint64_t)d->name_len + 1, t->names, h->names_size) && t->names[d->name_off + d->name_len] == 0,
                "dirent name outside the names blob or unterminated", d->name_off, d->name_len);
      }
    }
    if (S_ISLNK(n->mode))
      REQUIRE(inside(t->data + n->first, (uint64_t)n->count + 1, t->data, h->data_size) && t->data[n->first + n->count] == 0,
              "symlink target outside the data blob or unterminated", n->first, n->count);
    if (n->xattr_count == 0) continue;
    REQUIRE(inside(t->xattrs + n->xattr_first, (uint64_t)n->xattr_count * sizeof *t->xattrs, t->xattrs, (uint64_t)h->n_xattrs * sizeof *t->xattrs),
            "xattrs outside their section", n->xattr_first, n->xattr_count);
    const struct xt_xattr *x = &t->xattrs[n->xattr_first], *last = x + n->xattr_count - 1;
    for (uint32_t k = 0; k < n->xattr_count; k++) {
      REQUIRE(inside(t->data + x[k].name_off, (uint64_t)x[k].name_len + 1, t->data, h->data_size), "xattr name outside the data blob", x[k].name_off, x[k].name_len);
      REQUIRE(inside(t->data + x[k].value_off, x[k].value_len, t->data, h->data_size), "xattr value outside the data blob", x[k].value_off, x[k].value_len);
    }
    uint64_t span = (uint64_t)last->name_off + last->name_len + 1 - x->name_off;
    REQUIRE(last->name_off >= x->name_off && inside(t->data + x->name_off, span, t->data, h->data_size), "listxattr span outside the data blob", x->name_off, span);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 16) return 0;
  uint64_t off, len;
  memcpy(&off, data, 8);
  memcpy(&len, data + 8, 8);
  // An exact-size private copy, as mount() makes: ASan catches any read past its end.
  size_t n = size - 16;
  void *image = malloc(n > 0 ? n : 1);
  if (image == NULL) return 0;
  memcpy(image, data + 16, n);
  struct xt_tables t;
  if (xt_check(image, n, &t) == NULL) {
    check_ops(&t);
    uint32_t files = 0;
    for (uint32_t i = 0; i < t.h->n_inodes && files < 64; i++) {
      const struct xt_inode *node = &t.inodes[i];
      if (!S_ISREG(node->mode)) continue;
      files++;
      struct plan_bounds b = {.h = t.h, .ext = t.extents + node->first, .count = node->flags & XT_INLINE ? 0 : node->count, .copies = t.copies,
                              .n_copies = t.h->n_copies, .csums = t.data, .csums_size = t.h->data_size, .n_devices = t.h->n_devices};
      check_reads(&t, i, NULL, &b, off, len);
    }
  }
  free(image);
  return 0;
}
