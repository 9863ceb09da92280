// Shards (docs/shards.md): one image split n ways, so that n movers each back up a part of it. Every
// mover computes the plan alone from the same tables, so it is a function of the image only: each
// inode's kind, size and st_ino, never the packing order, the host or the clock.
//
// The unit is the inode: a hard-link group (one inode, several names) lands in one shard with all its
// names. Regular files with bytes go, largest first (ties: lower st_ino first), each to the shard with
// the fewest bytes so far (ties: the lowest shard index): LPT scheduling, whose largest shard holds at
// most the mean plus the last file placed on it, so within 10% of the mean whenever every file is under
// a tenth of it. Every other inode that is not a directory with entries (empty files, symlinks,
// devices, fifos, sockets, empty directories) goes to shard st_ino mod n: they cost a backup one
// metadata operation each, so they are spread by count. A directory with entries belongs to no shard:
// a shard shows it, with its own metadata, when it leads to one of the shard's inodes.
//
// Memory: 16 bytes per regular file for the sort and 4 per inode for the plan, freed before returning;
// a view keeps 1 byte per inode (visible[]).
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

struct by_size {
  uint64_t size, ino;
  uint32_t index;
};

// Larger first, then lower st_ino (unique in an image): a total order, so qsort's result is the same everywhere.
static int larger_first(const void *a, const void *b) {
  const struct by_size *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  return (x->ino > y->ino) - (x->ino < y->ino);
}

// A min-heap of shard indexes by (bytes, index): its top is the least-loaded shard, the lowest index among equals.
struct shard_heap {
  uint32_t *at, n;
  const struct xt_shard_sum *sums;
};

static int lighter(const struct shard_heap *h, uint32_t a, uint32_t b) {
  uint64_t x = h->sums[a].bytes, y = h->sums[b].bytes;
  return x != y ? x < y : a < b;
}

// The top's load grew: move it down to its place.
static void sift_down(struct shard_heap *h) {
  for (uint32_t k = 0;;) {
    uint32_t l = 2 * k + 1, r = l + 1, least = k;
    if (l < h->n && lighter(h, h->at[l], h->at[least])) least = l;
    if (r < h->n && lighter(h, h->at[r], h->at[least])) least = r;
    if (least == k) return;
    uint32_t tmp = h->at[k];
    h->at[k] = h->at[least], h->at[least] = tmp;
    k = least;
  }
}

// The regular files with bytes, largest first, each to the least-loaded shard.
static int place_files(const struct xt_tables *t, uint32_t n, uint32_t *shard_of, struct xt_shard_sum *sums) {
  uint32_t n_inodes = t->h->n_inodes, n_files = 0;
  for (uint32_t i = 0; i < n_inodes; i++) n_files += S_ISREG(t->inodes[i].mode) && t->inodes[i].size > 0;
  struct by_size *files = malloc((n_files > 0 ? n_files : 1) * sizeof *files);
  struct shard_heap h = {.at = malloc(n * sizeof *h.at), .n = n, .sums = sums};
  if (files == NULL || h.at == NULL) return free(files), free(h.at), ENOMEM;
  for (uint32_t i = 0, k = 0; i < n_inodes; i++) {
    const struct xt_inode *x = &t->inodes[i];
    if (S_ISREG(x->mode) && x->size > 0) files[k++] = (struct by_size){.size = x->size, .ino = x->ino, .index = i};
  }
  qsort(files, n_files, sizeof *files, larger_first);
  for (uint32_t s = 0; s < n; s++) h.at[s] = s; // all loads 0: ordered by index, a valid heap
  for (uint32_t k = 0; k < n_files; k++) {
    uint32_t s = h.at[0];
    shard_of[files[k].index] = s;
    if (sums[s].files == 0) sums[s].largest = files[k].size; // the first placed: the largest
    sums[s].files++, sums[s].inodes++, sums[s].bytes += files[k].size;
    sift_down(&h);
  }
  free(files);
  free(h.at);
  return 0;
}

int xt_shard_plan(const struct xt_tables *t, uint32_t n, uint32_t *shard_of, struct xt_shard_sum *sums) {
  if (n == 0 || n > XT_SHARDS_MAX) return EINVAL;
  for (uint32_t s = 0; s < n; s++) sums[s] = (struct xt_shard_sum){0};
  for (uint32_t i = 0; i < t->h->n_inodes; i++) shard_of[i] = XT_SHARD_NONE;
  int err = place_files(t, n, shard_of, sums);
  if (err != 0) return err;
  for (uint32_t i = 0; i < t->h->n_inodes; i++) {
    const struct xt_inode *x = &t->inodes[i];
    if (shard_of[i] != XT_SHARD_NONE || (S_ISDIR(x->mode) && x->count > 0)) continue;
    uint32_t s = (uint32_t)(x->ino % n);
    shard_of[i] = s;
    sums[s].inodes++;
    sums[s].files += S_ISREG(x->mode); // an empty file is a file of the shard, of 0 bytes
  }
  return 0;
}

// Directory `dir` and those above it up to one already shown (the root is from the start). A checked
// tree has no cycle; the walk is bounded all the same.
static void show_path(const struct xt_tables *t, uint8_t *visible, uint32_t dir) {
  for (uint32_t steps = 0; !visible[dir] && steps < t->h->n_inodes; steps++) {
    visible[dir] = 1;
    dir = t->inodes[dir].parent;
  }
}

int xt_shard_visible(const struct xt_tables *t, uint32_t i, uint32_t n, uint8_t *visible) {
  if (n == 0 || n > XT_SHARDS_MAX || i >= n) return EINVAL;
  uint32_t n_inodes = t->h->n_inodes;
  uint32_t *shard_of = malloc((n_inodes > 0 ? n_inodes : 1) * sizeof *shard_of);
  struct xt_shard_sum *sums = malloc(n * sizeof *sums);
  int err = shard_of == NULL || sums == NULL ? ENOMEM : xt_shard_plan(t, n, shard_of, sums);
  if (err == 0) {
    for (uint32_t k = 0; k < n_inodes; k++) visible[k] = shard_of[k] == i;
    if (n_inodes > 0) visible[0] = 1; // the root: the mountpoint itself
    // Every name of a shard's inode is shown, so every directory holding one (hard links: several).
    for (uint32_t d = 0; d < n_inodes; d++) {
      const struct xt_inode *dir = &t->inodes[d];
      if (!S_ISDIR(dir->mode)) continue;
      for (uint32_t k = 0; k < dir->count; k++)
        if (shard_of[t->dirents[dir->first + k].child] == i) show_path(t, visible, d);
    }
  }
  free(shard_of);
  free(sums);
  return err;
}

// ---------------------------------------------------------------------------------- the addon's

// Checked tables from a Buffer (a private copy, returned for the caller to free) or a mapTables()
// handle (checked whole here unless a mount did: `inspect` plans without mounting). 0 with *bad set
// or cleared; -1 with a JS exception pending.
static int tables_of(napi_env env, napi_value v, struct xt_tables *t, void **copy, const char **bad) {
  struct xt_mapped *m = xt_mapped_arg(env, v);
  *copy = NULL;
  if (m == NULL) return (*copy = xt_tables_arg(env, v, t, bad)) == NULL ? -1 : 0;
  *bad = m->checked ? (*t = m->t, NULL) : xt_check_paced(m->image, m->len, t, xt_mapped_drop_pages, m);
  xt_mapped_drop_pages(m);
  return 0;
}

static int throw_bad(napi_env env, const char *fn, const char *bad) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: bad tables: %s", fn, bad);
  napi_throw_error(env, NULL, msg);
  return -1;
}

static int set_u64(napi_env env, napi_value obj, const char *key, uint64_t v) {
  napi_value js;
  return napi_create_double(env, (double)v, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

// A Uint32Array or Uint8Array of `n` elements; its bytes at *data.
static napi_value typed_array(napi_env env, napi_typedarray_type type, size_t n, size_t size, void **data) {
  napi_value buf, arr;
  if (napi_create_arraybuffer(env, n * size > 0 ? n * size : 1, data, &buf) != napi_ok ||
      napi_create_typedarray(env, type, n, buf, 0, &arr) != napi_ok)
    return NULL;
  return arr;
}

// shardPlan(tables, count): {shards: [{files, bytes, inodes, largest}], shardOf: Uint32Array (per inode index,
// 0xffffffff for a directory with entries)}.
napi_value xt_js_shard_plan(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out, shards, arr, o;
  uint32_t n;
  struct xt_tables t;
  void *copy, *data;
  const char *bad;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || napi_get_value_uint32(env, argv[1], &n) != napi_ok ||
      n == 0 || n > XT_SHARDS_MAX)
    return napi_throw_error(env, NULL, "shardPlan(tables, 1 <= count <= 65536)"), NULL;
  if (tables_of(env, argv[0], &t, &copy, &bad) != 0) return NULL;
  if (bad != NULL) return free(copy), throw_bad(env, "shardPlan", bad), NULL;
  struct xt_shard_sum *sums = malloc(n * sizeof *sums);
  int err = sums == NULL || (arr = typed_array(env, napi_uint32_array, t.h->n_inodes, 4, &data)) == NULL ? ENOMEM : xt_shard_plan(&t, n, data, sums);
  free(copy);
  int failed = err != 0 || napi_create_object(env, &out) != napi_ok || napi_create_array_with_length(env, n, &shards) != napi_ok;
  for (uint32_t s = 0; !failed && s < n; s++)
    failed = napi_create_object(env, &o) != napi_ok || !set_u64(env, o, "files", sums[s].files) || !set_u64(env, o, "bytes", sums[s].bytes) ||
             !set_u64(env, o, "inodes", sums[s].inodes) || !set_u64(env, o, "largest", sums[s].largest) || napi_set_element(env, shards, s, o) != napi_ok;
  free(sums);
  if (failed || napi_set_named_property(env, out, "shards", shards) != napi_ok || napi_set_named_property(env, out, "shardOf", arr) != napi_ok)
    return napi_throw_error(env, NULL, "shardPlan: out of memory"), NULL;
  return out;
}

// shardVisible(tables, index, count): Uint8Array per inode index, 1 where shard `index` of `count` shows it.
napi_value xt_js_shard_visible(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], arr;
  uint32_t i, n;
  struct xt_tables t;
  void *copy, *data;
  const char *bad;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_get_value_uint32(env, argv[1], &i) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &n) != napi_ok || n == 0 || n > XT_SHARDS_MAX || i >= n)
    return napi_throw_error(env, NULL, "shardVisible(tables, index < count, 1 <= count <= 65536)"), NULL;
  if (tables_of(env, argv[0], &t, &copy, &bad) != 0) return NULL;
  if (bad != NULL) return free(copy), throw_bad(env, "shardVisible", bad), NULL;
  int err = (arr = typed_array(env, napi_uint8_array, t.h->n_inodes, 1, &data)) == NULL ? ENOMEM : xt_shard_visible(&t, i, n, data);
  free(copy);
  if (err != 0) return napi_throw_error(env, NULL, "shardVisible: out of memory"), NULL;
  return arr;
}
