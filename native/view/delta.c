// Deltas: replacing some files' extent lists (and adding devices) while the session serves on many
// threads, and remembering reads that a delta superseded (docs/remap.md, "Engine: atomic application,
// superseded reads"; docs/native-engine.md, "Deltas").
//
// Publication. Every inode has one atomic pointer to its current map (NULL: the tables' extents). A
// read loads it once and resolves the whole request through what it loaded, so it never mixes two
// maps; a delta builds every new map first and then stores the pointers (seq_cst), so a read that
// starts after applyDelta returned loads the new one. Readers take no lock and never wait: two loads
// to find the map, one for the device set. Maps and device sets a delta replaced are kept until
// unmount (a reader may still hold one, and there is no cheap way to know when none does): the memory
// is bounded by the sum of all deltas applied, 64 + 32 bytes per extent per file per delta, and the
// packed delta itself when it carries copies or checksums (the maps point into it).
//
// Superseded reads. served[index] says a read of the inode was served (1 byte per inode). Installing a
// map for an inode already served taints the new map: bytes may have come from the old location. A
// read in flight while its map is replaced is caught by the reader itself: after the read it marks the
// inode served and then loads the current map again; if that is no longer the one it read through, it
// taints the current map. Both sides use seq_cst (install, then check served; mark served, then check
// the map), so of any read and any delta one of the two sees the other: no superseded read escapes.
// A read racing the delta may taint a file it actually read through the new map (conservative).
// The taint clears once the bytes served through the current map since it was tainted reach the file
// size: bytes, not coverage (re-reading one half twice counts as the whole), which is what a
// sequential re-read by a backup produces.
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int xt_delta_init(struct engine *e) {
  uint32_t n = e->t.h->n_inodes, nd = e->t.h->n_devices;
  _Atomic uint8_t *served = calloc(n, 1);
  struct xt_devset *ds = calloc(1, sizeof *ds);
  if (served == NULL || ds == NULL) return free(served), free(ds), ENOMEM;
  ds->n = nd;
  ds->d = e->t.devices;
  e->served = served;
  atomic_init(&e->devs, ds);
  atomic_init(&e->maps, NULL);
  atomic_init(&e->generation, 0);
  return 0;
}

void xt_delta_destroy(struct engine *e) {
  for (struct xt_map *m = e->all_maps, *next; m != NULL; m = next) next = m->older, free(m->owned), free(m);
  for (struct xt_devset *d = atomic_load(&e->devs), *next; d != NULL; d = next) next = d->older, free(d);
  free((void *)atomic_load(&e->maps));
  free((void *)e->served);
  free(e->remapped);
  e->all_maps = NULL;
  atomic_store(&e->devs, NULL);
  atomic_store(&e->maps, NULL);
  e->served = NULL;
  e->remapped = NULL;
}

void xt_note_served(struct engine *e, uint32_t index, struct xt_map *m, uint64_t len) {
  // Plain load first: after the first read of an inode this is all the bookkeeping costs.
  if (!atomic_load(&e->served[index])) atomic_store(&e->served[index], 1);
  if (m != NULL) atomic_fetch_add_explicit(&m->fresh, len, memory_order_relaxed);
  xt_map_ptr *maps = atomic_load(&e->maps);
  if (maps == NULL) return; // no delta yet: nothing can have superseded `m`
  struct xt_map *now = atomic_load(&maps[index]);
  if (now != m) { // replaced during this read (never by NULL): its bytes may be the old location's
    atomic_store(&now->fresh, 0);
    atomic_store(&now->tainted, 1);
  }
}

int xt_delta_has(const struct xt_delta_file *files, uint32_t n, uint32_t index) {
  uint32_t lo = 0, hi = n; // a delta's files are sorted by index (xt_check_delta saw to it)
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (files[mid].index < index) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && files[lo].index == index;
}

// ------------------------------------------------------------------------------------ applying

static napi_value throw_msg(napi_env env, const char *prefix, const char *msg) {
  char text[640];
  snprintf(text, sizeof text, "%s%s", prefix, msg);
  napi_throw_error(env, NULL, text);
  return NULL;
}

static struct engine *engine_arg(napi_env env, napi_value v) {
  struct engine *e;
  if (napi_get_value_external(env, v, (void **)&e) != napi_ok) return NULL;
  return e;
}

// applyDelta(handle, delta: Buffer, deviceFds: number[]): everything is checked and allocated first,
// so a refused delta (it throws) changes nothing; then published, then the kernel's cached pages of
// the files are dropped. On the JS thread only (it may be inside a `judge` call).
napi_value xt_js_apply_delta(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  bool is_buffer = false, is_array = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) return throw_msg(env, "", "applyDelta(handle, delta, deviceFds)");
  struct engine *e = engine_arg(env, argv[0]);
  if (e == NULL || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer || napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array)
    return throw_msg(env, "", "applyDelta(handle, delta: Buffer, deviceFds: number[])");
  if (e->done || e->se == NULL) return throw_msg(env, "applyDelta: ", "the view is not mounted");
  // Unmounting closes the session's fd on another thread: a notification could hit a reused number.
  if (e->unmounting) return throw_msg(env, "applyDelta: ", "the view is being unmounted");
  void *data;
  size_t len;
  uint32_t n_fds;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || napi_get_array_length(env, argv[2], &n_fds) != napi_ok)
    return throw_msg(env, "", "applyDelta: bad arguments");

  char msg[512];
  struct xt_devset *old_devs = atomic_load(&e->devs);
  // The buffer is JS's: a private copy, so that what is checked is what is used (and aligned: a
  // Buffer may start anywhere).
  void *copy = malloc(len > 0 ? len : 1);
  if (copy == NULL) return throw_msg(env, "applyDelta: ", "out of memory");
  if (len > 0) memcpy(copy, data, len); // an empty Buffer's data may be NULL
  if (xt_check_delta(&e->t, copy, len, old_devs->n, n_fds, msg, sizeof msg) != 0) return free(copy), throw_msg(env, "applyDelta: bad delta: ", msg);
  const struct xt_delta_header *h = copy;
  const struct xt_delta_file *files = (const void *)((char *)copy + h->files_off);
  const struct xt_extent *ext = (const void *)((char *)copy + h->extents_off);
  const struct xt_device *ndev = (const void *)((char *)copy + h->devices_off);

  // Everything the delta needs, before anything is published.
  struct xt_devset *devs = NULL;
  xt_map_ptr *maps = atomic_load(&e->maps), *new_maps = NULL;
  struct xt_map **built = calloc(h->n_files > 0 ? h->n_files : 1, sizeof *built);
  const char *bad = built == NULL ? "out of memory" : NULL;
  if (bad == NULL && h->n_devices > 0) {
    devs = calloc(1, sizeof *devs + ((size_t)old_devs->n + h->n_devices) * sizeof(struct xt_device));
    if (devs == NULL) bad = "out of memory";
    for (uint32_t j = 0; bad == NULL && j < old_devs->n + h->n_devices; j++) {
      if (j < old_devs->n) {
        devs->own[j] = old_devs->d[j];
        continue;
      }
      int32_t fd;
      napi_value v;
      if (napi_get_element(env, argv[2], j - old_devs->n, &v) != napi_ok || napi_get_value_int32(env, v, &fd) != napi_ok || fd < -1 ||
          (fd >= 0 && fcntl(fd, F_GETFD) < 0)) { // -1: a retired device, never opened
        snprintf(msg, sizeof msg, "device fd %u (new device %u) is not an open file descriptor", j - old_devs->n, j);
        bad = msg;
        break;
      }
      devs->own[j] = (struct xt_device){.fd = fd, .size = ndev[j - old_devs->n].size};
    }
    if (devs != NULL) {
      devs->n = old_devs->n + h->n_devices;
      devs->d = devs->own;
      devs->older = old_devs;
    }
  }
  if (bad == NULL && maps == NULL && (maps = new_maps = calloc(e->t.h->n_inodes, sizeof *maps)) == NULL) bad = "out of memory";
  uint32_t fresh_indexes = 0;
  for (uint32_t k = 0; bad == NULL && k < h->n_files; k++) {
    if (atomic_load(&maps[files[k].index]) == NULL) fresh_indexes++;
    struct xt_map *m = calloc(1, sizeof *m + (size_t)files[k].count * sizeof(struct xt_extent));
    if (m == NULL) {
      bad = "out of memory";
      break;
    }
    m->count = files[k].count;
    m->copies = (const void *)((char *)copy + h->copies_off);
    m->csums = (char *)copy + h->data_off;
    memcpy(m->ext, ext + files[k].first, (size_t)m->count * sizeof(struct xt_extent));
    built[k] = m;
  }
  if (bad == NULL && (uint64_t)e->n_remapped + fresh_indexes > e->cap_remapped) {
    uint64_t cap = (uint64_t)e->cap_remapped * 2 + fresh_indexes + 16;
    if (cap > e->t.h->n_inodes) cap = e->t.h->n_inodes;
    uint32_t *r = realloc(e->remapped, cap * sizeof *r);
    if (r == NULL) bad = "out of memory";
    else e->remapped = r, e->cap_remapped = (uint32_t)cap;
  }
  if (bad != NULL) {
    for (uint32_t k = 0; built != NULL && k < h->n_files; k++) free(built[k]);
    free(built);
    free(new_maps);
    if (devs != NULL) devs->older = NULL, free(devs);
    free(copy);
    return throw_msg(env, "applyDelta: ", bad);
  }

  // Publish: devices before the maps that may use them, the map array before its entries.
  uint64_t gen = atomic_load(&e->generation) + 1;
  if (devs != NULL) atomic_store(&e->devs, devs);
  if (new_maps != NULL) atomic_store(&e->maps, new_maps);
  for (uint32_t k = 0; k < h->n_files; k++) {
    uint32_t index = files[k].index;
    struct xt_map *m = built[k];
    m->generation = gen;
    m->older = e->all_maps;
    e->all_maps = m;
    if (atomic_exchange(&maps[index], m) == NULL) e->remapped[e->n_remapped++] = index;
    if (atomic_load(&e->served[index])) atomic_store(&m->tainted, 1); // read under an earlier map
  }
  atomic_store(&e->generation, gen);
  xt_push_settle(e, files, h->n_files); // no push of the old map's bytes still on its way (push.c)
  xt_prefetch_settle(e, files, h->n_files); // nor a prefetch (prefetch.c)
  // Pages the kernel cached hold the old map's bytes (open sets keep_cache): drop them, so that
  // reads from now on reach the new map. An in-flight read holds its pages locked; the kernel waits
  // for it and drops those too. ENOENT: the kernel holds no such inode, nothing is cached.
  for (uint32_t k = 0; k < h->n_files; k++) fuse_lowlevel_notify_inval_inode(e->se, (fuse_ino_t)files[k].index + 1, 0, 0);
  // The maps' copies and checksums are in the delta: it stays, owned by one of them (freed at
  // teardown, with every map). Without any, the maps need nothing of it.
  if (h->n_files > 0 && (h->n_copies > 0 || h->data_size > 0)) built[0]->owned = copy;
  else free(copy);
  free(built);
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  return undefined;
}

// tainted(handle): inode indexes, ascending, of files served under a map a delta replaced since, and
// not read in full through their current map after that.
static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

napi_value xt_js_tainted(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  struct engine *e;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || (e = engine_arg(env, argv[0])) == NULL)
    return throw_msg(env, "", "tainted(handle)");
  if (e->done) return throw_msg(env, "tainted: ", "the view is not mounted");
  xt_map_ptr *maps = atomic_load(&e->maps);
  uint32_t *list = malloc((e->n_remapped > 0 ? e->n_remapped : 1) * sizeof *list), n = 0;
  if (list == NULL) return throw_msg(env, "tainted: ", "out of memory");
  for (uint32_t k = 0; k < e->n_remapped; k++) {
    uint32_t index = e->remapped[k];
    struct xt_map *m = atomic_load(&maps[index]);
    if (atomic_load(&m->tainted) && atomic_load(&m->fresh) < e->t.inodes[index].size) list[n++] = index;
  }
  qsort(list, n, sizeof *list, cmp_u32);
  if (napi_create_array_with_length(env, n, &out) != napi_ok) return free(list), NULL;
  for (uint32_t k = 0; k < n; k++) {
    if (napi_create_uint32(env, list[k], &v) != napi_ok || napi_set_element(env, out, k, v) != napi_ok) return free(list), NULL;
  }
  free(list);
  return out;
}

napi_value xt_js_generation(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  struct engine *e;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || (e = engine_arg(env, argv[0])) == NULL)
    return throw_msg(env, "", "generation(handle)");
  if (napi_create_double(env, (double)atomic_load(&e->generation), &out) != napi_ok) return NULL;
  return out;
}

// fileSize(handle, index): the size of the regular file at inode index `index`, or -1 when there is
// none: how the control plane checks a delta against the image once the tables live only here.
napi_value xt_js_file_size(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  struct engine *e;
  uint32_t index;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 || (e = engine_arg(env, argv[0])) == NULL ||
      napi_get_value_uint32(env, argv[1], &index) != napi_ok)
    return throw_msg(env, "", "fileSize(handle, index)");
  double size = index < e->t.h->n_inodes && S_ISREG(e->t.inodes[index].mode) ? (double)e->t.inodes[index].size : -1;
  if (napi_create_double(env, size, &out) != napi_ok) return NULL;
  return out;
}

// checkDelta(tables, delta, deviceFdCount): what applyDelta would refuse in `delta`, given with that
// many device fds, on a view of `tables` that no delta has changed yet; null when it is accepted.
napi_value xt_js_check_delta(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out;
  bool is_buffer = false;
  uint32_t n_fds;
  void *data;
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok ||
      !is_buffer || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || napi_get_value_uint32(env, argv[2], &n_fds) != napi_ok)
    return throw_msg(env, "", "checkDelta(tables, delta: Buffer, deviceFdCount)");
  struct xt_tables t;
  const char *bad;
  void *image = xt_tables_arg(env, argv[0], &t, &bad);
  if (image == NULL) return NULL;
  if (bad != NULL) return free(image), throw_msg(env, "checkDelta: bad tables: ", bad);
  char msg[512];
  void *copy = malloc(len > 0 ? len : 1); // aligned, as applyDelta's
  if (copy == NULL) return free(image), throw_msg(env, "checkDelta: ", "out of memory");
  if (len > 0) memcpy(copy, data, len); // an empty Buffer's data may be NULL
  int refused = xt_check_delta(&t, copy, len, t.h->n_devices, n_fds, msg, sizeof msg);
  free(copy);
  free(image);
  napi_status s = refused ? napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &out) : napi_get_null(env, &out);
  return s == napi_ok ? out : NULL;
}
