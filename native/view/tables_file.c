// N-API for tables that live in a file (issue 14): version 2 manifests are loaded by C (load2.c)
// into an unlinked file, which the engine maps instead of copying a Buffer. Version 1's Buffer path
// (engine.c mount(Buffer, ...)) is unchanged.
//   openTablesFile(dir) → fd                 an unlinked file in `dir` (O_TMPFILE; else mkstemp + unlink)
//   loadV2(manifestFd, body, trailer, facts, tablesFd) → {error} | {counts, deviceEnds, tablesBytes, heapBytes}
//   mapTables(fd) → handle                   mapped read-only, its sections checked (mount checks it all)
//   setTablesDevices(handle, fds)            the device fds written into the file (seen through the map)
//   tablesIndex(handle, ino), tablesIno(handle, index), tablesPath(handle, index) → Buffer,
//   tablesFileSize(handle, index), tablesCounts(handle)
// mount(handle, ...) and largeAcls(handle) take a handle where they take a Buffer (engine.c).
#include "engine.h"
#include "load2.h"
#include "../csum.h"
#include "../js_progress.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// Tells a mapped-tables handle from the engine's other externals (a session).
static const napi_type_tag MAPPED_TAG = {0x6578746673746162ull, 0x6c65736d61707065ull};

static napi_value throw_fmt(napi_env env, const char *fmt, const char *detail) {
  char msg[600];
  snprintf(msg, sizeof msg, fmt, detail);
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static int get_u64(napi_env env, napi_value obj, const char *key, uint64_t *out) {
  napi_value v;
  double d;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= 9007199254740991.0) || d != (double)(uint64_t)d) return 0;
  *out = (uint64_t)d;
  return 1;
}

static int set_u64(napi_env env, napi_value obj, const char *key, double v) {
  napi_value js;
  return napi_create_double(env, v, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

// ------------------------------------------------------------------------------ openTablesFile

static napi_value js_open_tables_file(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  char dir[4096];
  size_t len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], dir, sizeof dir, &len) != napi_ok || len == 0 || len >= sizeof dir - 32)
    return throw_fmt(env, "openTablesFile(dir)%s", "");
  int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) { // a filesystem without O_TMPFILE
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/extfs-tables.XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0) unlink(path);
  }
  if (fd < 0) return throw_fmt(env, "cannot make a tables file: %s", strerror(errno));
  napi_create_int32(env, fd, &out);
  return out;
}

// ------------------------------------------------------------------------------ loadV2

// facts: {deviceSizes: number[], features: M2L_* bits, root, blockSize, csumAlg, csumSize, sectorSize}
static int read_facts(napi_env env, napi_value facts, struct m2_load_in *in, uint64_t **sizes) {
  napi_value arr, v;
  uint32_t n;
  uint64_t features, root, bs, alg, csize, sector;
  bool is_array = false;
  if (napi_get_named_property(env, facts, "deviceSizes", &arr) != napi_ok || napi_is_array(env, arr, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, arr, &n) != napi_ok || n > 1024)
    return 0;
  if (!get_u64(env, facts, "features", &features) || !get_u64(env, facts, "root", &root) || !get_u64(env, facts, "blockSize", &bs) ||
      !get_u64(env, facts, "csumAlg", &alg) || !get_u64(env, facts, "csumSize", &csize) || !get_u64(env, facts, "sectorSize", &sector) ||
      features > 15 || bs > 65536 || alg > 1 || csize > 64 || sector > 65536)
    return 0;
  *sizes = calloc(n > 0 ? n : 1, sizeof **sizes);
  if (*sizes == NULL) return 0;
  for (uint32_t i = 0; i < n; i++) {
    double d;
    if (napi_get_element(env, arr, i, &v) != napi_ok || napi_get_value_double(env, v, &d) != napi_ok || !(d >= 1 && d <= 9007199254740991.0)) return 0;
    (*sizes)[i] = (uint64_t)d;
  }
  in->n_devices = n;
  in->device_sizes = *sizes;
  in->features = (uint32_t)features;
  in->root = root;
  in->block_size = (uint32_t)bs;
  in->csum_alg = (uint32_t)alg;
  in->csum_size = (uint32_t)csize;
  in->sector_size = (uint32_t)sector;
  return 1;
}

static napi_value load_result(napi_env env, const struct m2_load_out *o, uint32_t n_devices) {
  napi_value out, ends, v;
  if (napi_create_object(env, &out) != napi_ok || napi_create_array_with_length(env, n_devices, &ends) != napi_ok) return NULL;
  for (uint32_t i = 0; i < n_devices; i++)
    if (napi_create_double(env, (double)o->device_ends[i], &v) != napi_ok || napi_set_element(env, ends, i, v) != napi_ok) return NULL;
  int ok = napi_set_named_property(env, out, "deviceEnds", ends) == napi_ok && set_u64(env, out, "tablesBytes", (double)o->tables_bytes) &&
           set_u64(env, out, "heapBytes", (double)o->heap_bytes) && set_u64(env, out, "inodes", o->n_inodes) && set_u64(env, out, "dirents", o->n_dirents) &&
           set_u64(env, out, "extents", o->n_extents) && set_u64(env, out, "xattrs", o->n_xattrs) && set_u64(env, out, "copies", o->n_copies) &&
           set_u64(env, out, "names", (double)o->names_size) && set_u64(env, out, "data", (double)o->data_size);
  return ok ? out : NULL;
}

// The loader's progress passed to onProgress(done, total, inodes) (load2.h), on this thread, inside
// the call; a callback that throws is not called again (progress is not worth failing a mount for).
struct js_progress {
  napi_env env;
  napi_value fn;
};

static void report_load(void *ctx, uint64_t done, uint64_t total, uint32_t inodes) {
  struct js_progress *p = ctx;
  const double values[] = {(double)done, (double)total, (double)inodes};
  js_progress_call(p->env, &p->fn, NULL, values, 3);
}

// loadV2(manifestFd, {start, end}, {inodes, dirs, entries}, facts, tablesFd[, onProgress]): synchronous
// (the mover has nothing else to do before it serves). A bad body is an answer ({error: one line}), not a throw.
static napi_value js_load_v2(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], out, v;
  napi_valuetype type = napi_undefined;
  struct js_progress progress = {env, NULL};
  int32_t mfd, tfd;
  uint64_t start, end, inodes, dirs, entries;
  struct m2_load_in in = {0};
  uint64_t *sizes = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 || napi_get_value_int32(env, argv[0], &mfd) != napi_ok ||
      napi_get_value_int32(env, argv[4], &tfd) != napi_ok || !get_u64(env, argv[1], "start", &start) || !get_u64(env, argv[1], "end", &end) ||
      !get_u64(env, argv[2], "inodes", &inodes) || !get_u64(env, argv[2], "dirs", &dirs) || !get_u64(env, argv[2], "entries", &entries) ||
      inodes > UINT32_MAX || dirs > UINT32_MAX || !read_facts(env, argv[3], &in, &sizes)) {
    free(sizes);
    return throw_fmt(env, "loadV2(manifestFd, {start, end}, {inodes, dirs, entries}, {deviceSizes, features, root, blockSize, csumAlg, csumSize, sectorSize}, tablesFd)%s", "");
  }
  if (argc >= 6 && napi_typeof(env, argv[5], &type) == napi_ok && type == napi_function) {
    progress.fn = argv[5];
    in.progress = report_load, in.progress_ctx = &progress;
  }
  in.manifest_fd = mfd, in.tables_fd = tfd, in.body_start = start, in.body_end = end;
  in.n_inodes = (uint32_t)inodes, in.n_dirs = (uint32_t)dirs, in.n_entries = entries;
  uint64_t *ends = calloc(in.n_devices > 0 ? in.n_devices : 1, sizeof *ends);
  struct m2_load_out o = {.device_ends = ends};
  char msg[512];
  int rc = ends == NULL ? (snprintf(msg, sizeof msg, "out of memory"), -1) : m2_load(&in, &o, msg, sizeof msg);
  if (rc == 0) {
    out = load_result(env, &o, in.n_devices);
  } else if (napi_create_object(env, &out) != napi_ok || napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &v) != napi_ok ||
             napi_set_named_property(env, out, "error", v) != napi_ok) {
    out = NULL;
  }
  free(ends);
  free(sizes);
  return out;
}

// ------------------------------------------------------------------------------ mapped tables

void xt_mapped_drop_pages(void *arg) {
  struct xt_mapped *m = arg;
  madvise(m->image, m->len, MADV_DONTNEED); // a shared file mapping: nothing is lost, a later touch maps the page again
}

void xt_mapped_unref(struct xt_mapped *m) {
  if (atomic_fetch_sub(&m->refs, 1) != 1) return;
  munmap(m->image, m->len);
  close(m->fd);
  free(m);
}

static void mapped_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  xt_mapped_unref(data);
}

struct xt_mapped *xt_mapped_arg(napi_env env, napi_value v) {
  bool tagged = false;
  void *m;
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_external) return NULL;
  if (napi_check_object_type_tag(env, v, &MAPPED_TAG, &tagged) != napi_ok || !tagged) return NULL;
  return napi_get_value_external(env, v, &m) == napi_ok ? m : NULL;
}

// mapTables(fd): the tables file mapped read-only, the handle keeping its own fd. Only its sections
// are checked here (header, every section inside the file): the helpers below bound every index
// themselves, and mount() runs the whole xt_check once, paced so that the image does not stay
// resident. The file is the loader's own (O_TMPFILE, no name), so the inode order m2_index_of relies
// on is m2_load's; the c-load2 fuzzer asserts it of everything m2_load writes.
static napi_value js_map_tables(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], handle;
  int32_t fd;
  struct stat st;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok)
    return throw_fmt(env, "mapTables(fd)%s", "");
  if (fstat(fd, &st) != 0) return throw_fmt(env, "mapTables: %s", strerror(errno));
  if (st.st_size < (off_t)sizeof(struct xt_header)) return throw_fmt(env, "mapTables: bad tables: %s", "shorter than a header");
  struct xt_mapped *m = calloc(1, sizeof *m);
  if (m == NULL) return throw_fmt(env, "mapTables: %s", "out of memory");
  m->len = (uint64_t)st.st_size;
  m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  m->image = m->fd < 0 ? MAP_FAILED : mmap(NULL, m->len, PROT_READ, MAP_SHARED, m->fd, 0);
  if (m->image == MAP_FAILED) {
    int err = errno;
    if (m->fd >= 0) close(m->fd);
    free(m);
    return throw_fmt(env, "mapTables: %s", strerror(err));
  }
  atomic_store(&m->refs, 1);
  const char *bad = xt_check_sections(m->image, m->len, &m->t);
  if (bad != NULL) {
    xt_mapped_unref(m);
    return throw_fmt(env, "mapTables: bad tables: %s", bad);
  }
  if (napi_create_external(env, m, mapped_finalize, NULL, &handle) != napi_ok || napi_type_tag_object(env, handle, &MAPPED_TAG) != napi_ok) {
    xt_mapped_unref(m);
    return throw_fmt(env, "mapTables: %s", "cannot make a handle");
  }
  return handle;
}

static struct xt_mapped *mapped_arg_or_throw(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *usage) {
  size_t argc = want;
  struct xt_mapped *m = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want || (m = xt_mapped_arg(env, argv[0])) == NULL)
    throw_fmt(env, "%s", usage);
  return m;
}

static int index_arg(napi_env env, const struct xt_mapped *m, napi_value v, uint32_t *index) {
  return napi_get_value_uint32(env, v, index) == napi_ok && *index < m->t.h->n_inodes;
}

// setTablesDevices(handle, fds): one fd per device, written into the tables file where read.c looks.
static napi_value js_set_tables_devices(napi_env env, napi_callback_info info) {
  napi_value argv[2], v;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 2, argv, "setTablesDevices(handle, fds)");
  uint32_t n;
  if (m == NULL) return NULL;
  if (napi_get_array_length(env, argv[1], &n) != napi_ok || n != m->t.h->n_devices) return throw_fmt(env, "setTablesDevices: %s", "one fd per device");
  for (uint32_t i = 0; i < n; i++) {
    int32_t fd;
    if (napi_get_element(env, argv[1], i, &v) != napi_ok || napi_get_value_int32(env, v, &fd) != napi_ok || fd < -1)
      return throw_fmt(env, "setTablesDevices: %s", "fds must be integers >= -1");
    off_t at = (off_t)(m->t.h->devices_off + i * sizeof(struct xt_device) + offsetof(struct xt_device, fd));
    if (pwrite(m->fd, &fd, sizeof fd, at) != (ssize_t)sizeof fd) return throw_fmt(env, "setTablesDevices: %s", strerror(errno));
  }
  return NULL;
}

static napi_value js_tables_index(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  double ino;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 2, argv, "tablesIndex(handle, ino)");
  if (m == NULL) return NULL;
  if (napi_get_value_double(env, argv[1], &ino) != napi_ok) return throw_fmt(env, "tablesIndex: %s", "ino must be a number");
  int64_t index = ino >= 1 && ino <= 9007199254740991.0 && ino == (double)(uint64_t)ino ? m2_index_of(m->t.inodes, m->t.h->n_inodes, (uint64_t)ino) : -1;
  napi_create_double(env, (double)index, &out);
  return out;
}

static napi_value js_tables_ino(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  uint32_t index;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 2, argv, "tablesIno(handle, index)");
  if (m == NULL) return NULL;
  napi_create_double(env, index_arg(env, m, argv[1], &index) ? (double)m->t.inodes[index].ino : -1, &out);
  return out;
}

static napi_value js_tables_file_size(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  uint32_t index;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 2, argv, "tablesFileSize(handle, index)");
  if (m == NULL) return NULL;
  int file = index_arg(env, m, argv[1], &index) && S_ISREG(m->t.inodes[index].mode);
  napi_create_double(env, file ? (double)m->t.inodes[index].size : -1, &out);
  return out;
}

// The dirent of `dir` that names `child` (its first name there), or NULL. Bounded here: the tables
// may not have been checked whole yet (mapTables).
static const struct xt_dirent *name_in(const struct xt_tables *t, uint32_t dir, uint32_t child) {
  if (dir >= t->h->n_inodes) return NULL;
  const struct xt_inode *d = &t->inodes[dir];
  if (!S_ISDIR(d->mode) || d->first > t->h->n_dirents || d->count > t->h->n_dirents - d->first) return NULL;
  for (uint32_t k = 0; k < d->count; k++) {
    const struct xt_dirent *e = &t->dirents[d->first + k];
    if (e->child == child) return (uint64_t)e->name_off + e->name_len <= t->h->names_size ? e : NULL;
  }
  return NULL;
}

// tablesPath(handle, index): the bytes of the path of its first name, "/a/b", for log lines. The
// tables keep no name per inode: each level scans its parent's entries (log lines are rare).
static napi_value js_tables_path(napi_env env, napi_callback_info info) {
  napi_value argv[2], out;
  uint32_t index;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 2, argv, "tablesPath(handle, index)");
  if (m == NULL) return NULL;
  if (!index_arg(env, m, argv[1], &index)) return throw_fmt(env, "tablesPath: %s", "index out of range");
  const struct xt_tables *t = &m->t;
  char path[4096 + 256];
  size_t at = sizeof path; // built from the end
  for (uint32_t i = index, depth = 0; i != 0 && depth < t->h->n_inodes; i = t->inodes[i].parent, depth++) {
    const struct xt_dirent *d = name_in(t, t->inodes[i].parent, i);
    if (d == NULL || d->name_len + 1u > at) break; // deeper than a path holds: the tail is enough for a log
    at -= d->name_len;
    memcpy(path + at, t->names + d->name_off, d->name_len);
    path[--at] = '/';
  }
  if (at == sizeof path) path[--at] = '/';
  if (napi_create_buffer_copy(env, sizeof path - at, path + at, NULL, &out) != napi_ok) return NULL;
  return out;
}

static napi_value js_tables_counts(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  struct xt_mapped *m = mapped_arg_or_throw(env, info, 1, argv, "tablesCounts(handle)");
  if (m == NULL) return NULL;
  const struct xt_header *h = m->t.h;
  if (napi_create_object(env, &out) != napi_ok || !set_u64(env, out, "inodes", h->n_inodes) || !set_u64(env, out, "dirents", h->n_dirents) ||
      !set_u64(env, out, "extents", h->n_extents) || !set_u64(env, out, "xattrs", h->n_xattrs) || !set_u64(env, out, "names", (double)h->names_size) ||
      !set_u64(env, out, "data", (double)h->data_size) || !set_u64(env, out, "bytes", (double)m->len) || !set_u64(env, out, "sfBlocks", (double)h->sf_blocks))
    return NULL;
  return out;
}

napi_status xt_tables_file_init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
    {"openTablesFile", NULL, js_open_tables_file, NULL, NULL, NULL, napi_enumerable, NULL},
    {"loadV2", NULL, js_load_v2, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mapTables", NULL, js_map_tables, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setTablesDevices", NULL, js_set_tables_devices, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tablesIndex", NULL, js_tables_index, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tablesIno", NULL, js_tables_ino, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tablesPath", NULL, js_tables_path, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tablesFileSize", NULL, js_tables_file_size, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tablesCounts", NULL, js_tables_counts, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
