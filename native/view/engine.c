// N-API glue of the native view engine (src/native-engine/native-engine.ts is its only caller):
//   layout()                                   struct sizes and field offsets of tables.h
//   mount(tables, record, mountpoint, options, judge, onEvent, leaseMs, prefetchWindow, shardIndex, shardCount) → handle
//   unmount(handle) → Promise                  umount(2), end the loop, free everything
//   applyDelta(handle, delta, deviceFds), tainted(handle), generation(handle), fileSize(handle, index)   see delta.c
//   setLease(handle, ms)                       how long opens and reads are served unasked (config.c)
//   viewStats(handle), prefetchStats(handle)   what the view served since mount (stats.c, prefetch.c)
// For tests, with no mount (src/native-engine/addon.ts):
//   checkTables(tables) → message | null       xt_check
//   planRead(tables, index, offset, size)      the pieces of a read, as read.c plans it
//   checkDelta(tables, delta, deviceFdCount)   the check applyDelta makes (delta.c)
//   decode(algorithm, stream, decodedLength, sectorSize)   a compressed extent decoded (decode.c)
//   readFile(tables, index, offset, size)      a read as the FUSE read serves it, I/O on the tables' fds (read.c)
// Before mount, and for tests:
//   largeAcls(tables, limit?)                  the POSIX ACLs the kernel cannot pass through FUSE (ops.c)
//   shardPlan(tables, count), shardVisible(tables, index, count)   the image split n ways (shard.c)
// Tables in a file (version 2 manifests): see tables_file.c; mount and largeAcls take its handle too.
// mount() copies (or, from a file, maps) and checks the tables, mounts with libfuse3 and runs fuse_session_loop_mt on its
// own pthread: from then on requests are served in C and the Node event loop stays free.
#include "engine.h"
#include "../csum.h"
#include "decode.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#define CHECK(call)                                                  \
  do {                                                               \
    if ((call) != napi_ok) return napi_throw_error(env, NULL, #call), NULL; \
  } while (0)

// ---------------------------------------------------------------------------------- layout()

static int set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value js;
  return napi_create_double(env, v, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

static int set_bool(napi_env env, napi_value obj, const char *key, int v) {
  napi_value js;
  return napi_get_boolean(env, v != 0, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

// {size, fields: {name: {offset, size, signed}}}
static napi_value describe(napi_env env, size_t size, const char **names, const size_t *offs, const size_t *sizes, const int *signs, size_t n) {
  napi_value d, fields, f;
  if (napi_create_object(env, &d) != napi_ok || napi_create_object(env, &fields) != napi_ok || !set_num(env, d, "size", (double)size))
    return NULL;
  for (size_t i = 0; i < n; i++) {
    if (napi_create_object(env, &f) != napi_ok || !set_num(env, f, "offset", (double)offs[i]) ||
        !set_num(env, f, "size", (double)sizes[i]) || !set_bool(env, f, "signed", signs[i]) ||
        napi_set_named_property(env, fields, names[i], f) != napi_ok)
      return NULL;
  }
  return napi_set_named_property(env, d, "fields", fields) == napi_ok ? d : NULL;
}

// One struct of tables.h, described through a sample `s` of it and its field list. A field is signed
// when -1 converted to its type stays below 1: the same bytes read as u32 or i32 differ (a device fd
// of -1, a time before 1970), so JS must agree on that too, not only on offsets and sizes.
#define NAME(f) #f,
#define OFF(f) (size_t)((const char *)&s.f - (const char *)&s),
#define SIZE(f) sizeof s.f,
#define SIGNED(f) ((__typeof__(s.f))-1 < (__typeof__(s.f))1),
#define DESCRIBE(KEY, T, LIST)                                                                     \
  do {                                                                                             \
    T s;                                                                                           \
    static const char *names[] = {LIST(NAME)};                                                     \
    const size_t offs[] = {LIST(OFF)}, sizes[] = {LIST(SIZE)};                                     \
    const int signs[] = {LIST(SIGNED)};                                                            \
    napi_value d = describe(env, sizeof s, names, offs, sizes, signs, sizeof names / sizeof *names); \
    if (d == NULL || napi_set_named_property(env, out, KEY, d) != napi_ok) return NULL;            \
  } while (0)

static napi_value js_layout(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  CHECK(napi_create_object(env, &out));
  if (!set_num(env, out, "version", XT_VERSION) || !set_num(env, out, "magic", XT_MAGIC)) return NULL;
  DESCRIBE("header", struct xt_header, XT_HEADER_FIELDS);
  DESCRIBE("inode", struct xt_inode, XT_INODE_FIELDS);
  DESCRIBE("dirent", struct xt_dirent, XT_DIRENT_FIELDS);
  DESCRIBE("extent", struct xt_extent, XT_EXTENT_FIELDS);
  DESCRIBE("xattr", struct xt_xattr, XT_XATTR_FIELDS);
  DESCRIBE("device", struct xt_device, XT_DEVICE_FIELDS);
  DESCRIBE("copy", struct xt_copy, XT_COPY_FIELDS);
  DESCRIBE("compressed", struct xt_compressed, XT_COMPRESSED_FIELDS);
  DESCRIBE("delta_header", struct xt_delta_header, XT_DELTA_HEADER_FIELDS);
  DESCRIBE("delta_file", struct xt_delta_file, XT_DELTA_FILE_FIELDS);
  if (!set_num(env, out, "deltaVersion", XT_DELTA_VERSION) || !set_num(env, out, "deltaMagic", XT_DELTA_MAGIC)) return NULL;
  return out;
}

// ---------------------------------------------------------------------------------- events

static const char *const event_kinds[] = {[XT_EV_OPEN_REFUSED] = "open", [XT_EV_READ_FAILED] = "read", [XT_EV_READ_REFUSED] = "read-refused",
                                          [XT_EV_ACL_UNSERVED] = "acl"};

// On the JS thread: onEvent({kind, index, offset, device, deviceOffset, size, asked, reason}). env is
// NULL when the function is torn down with events still queued; they are dropped.
static void event_js(napi_env env, napi_value fn, void *context, void *data) {
  (void)context;
  struct xt_event *ev = data;
  napi_value obj, kind, reason, undefined, result;
  if (env != NULL && napi_create_object(env, &obj) == napi_ok &&
      napi_create_string_utf8(env, event_kinds[ev->kind], NAPI_AUTO_LENGTH, &kind) == napi_ok &&
      napi_set_named_property(env, obj, "kind", kind) == napi_ok && set_num(env, obj, "index", ev->index) &&
      set_num(env, obj, "offset", (double)ev->offset) && set_num(env, obj, "device", ev->device) &&
      set_num(env, obj, "deviceOffset", (double)ev->device_offset) && set_num(env, obj, "size", ev->value_len) &&
      set_num(env, obj, "asked", (double)ev->asked) &&
      napi_create_string_utf8(env, ev->reason, NAPI_AUTO_LENGTH, &reason) == napi_ok &&
      napi_set_named_property(env, obj, "reason", reason) == napi_ok && napi_get_undefined(env, &undefined) == napi_ok) {
    if (napi_call_function(env, undefined, fn, 1, &obj, &result) != napi_ok) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
    }
  }
  free(ev);
}

napi_status xt_call_js(struct engine *e, napi_threadsafe_function fn, void *data, napi_threadsafe_function_call_mode mode) {
  pthread_rwlock_rdlock(&e->js_lock);
  napi_status s = e->js_closed ? napi_closing : napi_call_threadsafe_function(fn, data, mode);
  pthread_rwlock_unlock(&e->js_lock);
  return s;
}

void xt_post_event(struct engine *e, const struct xt_event *ev) {
  if (e->events == NULL) { // no mount: readFile (tests)
    if (e->test_event != NULL && e->test_event->kind == 0) *e->test_event = *ev;
    return;
  }
  struct xt_event *copy = malloc(sizeof *copy);
  if (copy == NULL) {
    atomic_fetch_add(&e->events_lost, 1);
    return;
  }
  *copy = *ev;
  if (xt_call_js(e, e->events, copy, napi_tsfn_nonblocking) != napi_ok) {
    free(copy);
    atomic_fetch_add(&e->events_lost, 1);
  }
}

// The process exits with the view still mounted: Node is about to free the threadsafe functions,
// so the workers must stop calling them (opens are refused from here on; the mount dies with us).
static void env_closing(void *arg) {
  struct engine *e = arg;
  pthread_rwlock_wrlock(&e->js_lock);
  e->js_closed = 1;
  pthread_rwlock_unlock(&e->js_lock);
}

// ---------------------------------------------------------------------------- session thread

static void *loop_main(void *arg) {
  struct engine *e = arg;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  if (cfg == NULL) return NULL;
  fuse_loop_cfg_set_clone_fd(cfg, 1);         // one /dev/fuse fd per worker: no contention on one queue
  fuse_loop_cfg_set_max_threads(cfg, 16);     // readahead keeps several 1 MiB reads in flight
  fuse_loop_cfg_set_idle_threads(cfg, 16);    // keep them: creating threads per burst costs more
  xt_push_start(e); // its threads inherit this thread's signal mask, like the workers
  xt_prefetch_start(e);
  fuse_session_loop_mt(e->se, cfg);
  xt_push_stop(e); // the connection has ended: a store in progress fails, and every pusher returns
  xt_prefetch_stop(e);
  fuse_loop_cfg_destroy(cfg);
  return NULL;
}

// Everything but the struct itself, which lives on as long as JS holds its handle (see js_unmount).
static void engine_teardown(struct engine *e) {
  if (e->se != NULL) fuse_session_destroy(e->se);
  xt_push_free(e);
  xt_prefetch_free(e);
  xt_config_destroy(e);
  xt_delta_destroy(e);
  xt_stats_destroy(e);
  free(e->visible);
  e->visible = NULL;
  pthread_rwlock_destroy(&e->js_lock);
  if (e->mapped != NULL) xt_mapped_unref(e->mapped);
  else free(e->t.image);
  e->mapped = NULL;
  e->t.image = NULL;
  free(e->mountpoint);
  e->done = 1;
}

static void engine_free(struct engine *e) {
  engine_teardown(e);
  free(e);
}

// The handle was collected: free the struct once torn down (a view never unmounted stays mounted
// until the process exits; its memory with it).
static void handle_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  struct engine *e = data;
  if (e->done) free(e);
  else e->orphaned = 1;
}

static char *get_string(napi_env env, napi_value v) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (s != NULL) napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (s != NULL && strlen(s) != len) free(s), s = NULL; // embedded NUL
  return s;
}

static struct engine *engine_new(napi_env env, napi_value record, napi_value mountpoint) {
  struct engine *e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  char *path = get_string(env, record);
  int err = path == NULL || xt_config_init(e, path) != 0;
  free(path);
  if (err) return free(e), NULL;
  pthread_rwlock_init(&e->js_lock, NULL);
  xt_lease_set(e, -1);
  if ((e->mountpoint = get_string(env, mountpoint)) == NULL) return engine_free(e), NULL;
  return e;
}

static napi_value fail(napi_env env, struct engine *e, const char *msg) {
  if (e != NULL) engine_free(e);
  napi_throw_error(env, NULL, msg);
  return NULL;
}

// A shard view: e->visible for shard i of n of the checked tables, before the stats count what it shows.
static const char *shard_view(struct engine *e, uint32_t i, uint32_t n) {
  uint32_t n_inodes = e->t.h->n_inodes;
  e->visible = malloc(n_inodes > 0 ? n_inodes : 1);
  int err = e->visible == NULL ? ENOMEM : xt_shard_visible(&e->t, i, n, e->visible);
  if (e->mapped != NULL) xt_mapped_drop_pages(e->mapped);
  return err != 0 ? "out of memory" : NULL;
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value argv[10], name;
  int64_t lease_ms = -1, prefetch_window = -1;
  uint32_t shard_index = 0, shard_count = 0; // count 0: the whole image
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *buf = NULL;
  size_t len = 0;
  bool is_buffer = false;
  struct xt_mapped *mapped = argc >= 1 ? xt_mapped_arg(env, argv[0]) : NULL;
  if (argc < 10 || (mapped == NULL && (napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer)) ||
      napi_get_value_int64(env, argv[6], &lease_ms) != napi_ok || napi_get_value_int64(env, argv[7], &prefetch_window) != napi_ok ||
      prefetch_window < -1 || prefetch_window > (int64_t)XT_PREFETCH_WINDOW_MAX || napi_get_value_uint32(env, argv[8], &shard_index) != napi_ok ||
      napi_get_value_uint32(env, argv[9], &shard_count) != napi_ok || shard_count > XT_SHARDS_MAX || (shard_count > 0 && shard_index >= shard_count)) {
    return fail(env, NULL, "mount(tables Buffer or mapTables handle, record, mountpoint, options, judge, onEvent, leaseMs, prefetchWindow, shardIndex, shardCount)");
  }
  if (mapped == NULL) CHECK(napi_get_buffer_info(env, argv[0], &buf, &len));

  char msg[512], *options = get_string(env, argv[3]);
  struct engine *e = engine_new(env, argv[1], argv[2]);
  if (e == NULL || options == NULL) {
    free(options);
    return fail(env, e, "mount: out of memory or bad string argument");
  }
  const char *bad = NULL;
  if (mapped != NULL) {
    // The file's mapping, shared with the JS handle (which checked its sections only), checked whole
    // here with the device fds written into it. The pages checked are dropped as the check goes and
    // at its end: they stay in the page cache, and only those requests touch come back.
    atomic_fetch_add(&mapped->refs, 1);
    e->mapped = mapped;
    bad = xt_check_paced(mapped->image, mapped->len, &e->t, xt_mapped_drop_pages, mapped);
    xt_mapped_drop_pages(mapped);
    if (bad == NULL) mapped->checked = 1;
  } else {
    // A private copy: the request path must not depend on a JS buffer's lifetime or contents.
    bad = (e->t.image = malloc(len > 0 ? len : 1)) == NULL ? "out of memory" : NULL;
    if (bad == NULL) {
      if (len > 0) memcpy(e->t.image, buf, len); // an empty Buffer's data may be NULL
      bad = xt_check(e->t.image, len, &e->t);
    }
  }
  if (bad == NULL && shard_count > 0) bad = shard_view(e, shard_index, shard_count);
  if (bad == NULL && (xt_delta_init(e) != 0 || xt_stats_init(e) != 0)) bad = "out of memory";
  if (bad != NULL) {
    free(options);
    snprintf(msg, sizeof msg, "mount: bad tables: %s", bad);
    return fail(env, e, msg);
  }

  xt_lease_set(e, lease_ms); // before the first request can arrive
  e->prefetch_window = prefetch_window; // read when the session thread starts prefetch
  xt_config_prime(env, e, argv[4]);

  char *args_v[] = {"extfs", "-o", options, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, args_v);
  e->se = fuse_session_new(&args, &xt_ops, sizeof xt_ops, e);
  fuse_opt_free_args(&args);
  free(options);
  if (e->se == NULL) return fail(env, e, "mount: fuse_session_new failed (bad options?)");
  if (fuse_session_mount(e->se, e->mountpoint) != 0) {
    snprintf(msg, sizeof msg, "mount: fuse_session_mount on %s failed", e->mountpoint);
    return fail(env, e, msg);
  }

  // The threadsafe functions keep the process alive while the view serves; released at unmount.
  if (napi_create_string_utf8(env, "extfs-view", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, NULL, xt_judge_js, &e->judge) != napi_ok ||
      napi_create_threadsafe_function(env, argv[5], NULL, name, 1024, 1, NULL, NULL, NULL, event_js, &e->events) != napi_ok) {
    if (e->judge != NULL) napi_release_threadsafe_function(e->judge, napi_tsfn_abort);
    fuse_session_unmount(e->se);
    return fail(env, e, "mount: cannot create threadsafe functions");
  }

  // Node handles signals; the loop and the workers it starts inherit a mask that blocks them all.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int err = pthread_create(&e->loop, NULL, loop_main, e);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    napi_release_threadsafe_function(e->judge, napi_tsfn_abort);
    napi_release_threadsafe_function(e->events, napi_tsfn_abort);
    fuse_session_unmount(e->se);
    return fail(env, e, "mount: cannot start the session thread");
  }
  napi_add_env_cleanup_hook(env, env_closing, e); // after the functions: runs before their teardown
  napi_value handle;
  CHECK(napi_create_external(env, e, handle_finalize, NULL, &handle));
  return handle;
}

// ---------------------------------------------------------------------------------- unmount

// On libuv's pool. A real umount(2): EBUSY leaves the view serving. Unmounted already (EINVAL:
// not a mountpoint any more) counts as done. Once unmounted, the kernel ends the connection, the
// workers read ENODEV and the loop returns.
static void unmount_execute(napi_env env, void *data) {
  (void)env;
  struct engine *e = data;
  if (umount2(e->mountpoint, 0) != 0 && errno != EINVAL && errno != ENOENT) {
    e->unmount_err = errno;
    return;
  }
  e->unmount_err = 0;
  pthread_join(e->loop, NULL);
  fuse_session_unmount(e->se); // closes /dev/fuse; finds the connection gone and unmounts nothing
}

static void unmount_complete(napi_env env, napi_status status, void *data) {
  struct engine *e = data;
  napi_deferred deferred = e->unmount_deferred;
  napi_delete_async_work(env, e->unmount_work);
  e->unmounting = 0;
  napi_value err, msg;
  if (status != napi_ok || e->unmount_err != 0) {
    char text[512];
    snprintf(text, sizeof text, "umount %s: %s", e->mountpoint, status != napi_ok ? "cancelled" : strerror(e->unmount_err));
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, deferred, err);
    return;
  }
  // The loop has ended: no worker can call into JS any more.
  napi_remove_env_cleanup_hook(env, env_closing, e);
  napi_release_threadsafe_function(e->judge, napi_tsfn_release);
  napi_release_threadsafe_function(e->events, napi_tsfn_release);
  engine_teardown(e);
  if (e->orphaned) free(e);
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  napi_resolve_deferred(env, deferred, undefined);
}

// eventsLost(handle): how many events xt_post_event could not deliver since mount.
static napi_value js_events_lost(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  struct engine *e;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_external(env, argv[0], (void **)&e) != napi_ok)
    return fail(env, NULL, "eventsLost(handle)");
  CHECK(napi_create_double(env, (double)atomic_load(&e->events_lost), &out));
  return out;
}

static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, name;
  struct engine *e;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&e) != napi_ok) return fail(env, NULL, "unmount(handle)");
  if (e->unmounting) return fail(env, NULL, "unmount already in progress");
  CHECK(napi_create_promise(env, &e->unmount_deferred, &promise));
  if (e->done) { // unmounted before: nothing to do
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, e->unmount_deferred, undefined);
    return promise;
  }
  CHECK(napi_create_string_utf8(env, "extfs-view-unmount", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, unmount_execute, unmount_complete, e, &e->unmount_work));
  CHECK(napi_queue_async_work(env, e->unmount_work));
  e->unmounting = 1;
  return promise;
}

// setLease(handle, ms): opens and reads are served without asking judge() for ms more milliseconds;
// ms < 0: no lease. Any thread may have read the old value; the next request sees the new one.
static napi_value js_set_lease(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  struct engine *e;
  int64_t ms;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || napi_get_value_external(env, argv[0], (void **)&e) != napi_ok || napi_get_value_int64(env, argv[1], &ms) != napi_ok) return fail(env, NULL, "setLease(handle, ms)");
  if (e->done) return fail(env, NULL, "setLease: the view is not mounted");
  xt_lease_set(e, ms);
  return NULL;
}

// --------------------------------------------------------------------------- for tests, no mount

void *xt_tables_arg(napi_env env, napi_value v, struct xt_tables *t, const char **bad) {
  void *buf;
  size_t len;
  bool is_buffer = false;
  if (napi_is_buffer(env, v, &is_buffer) != napi_ok || !is_buffer || napi_get_buffer_info(env, v, &buf, &len) != napi_ok)
    return napi_throw_type_error(env, NULL, "tables must be a Buffer"), NULL;
  void *image = malloc(len > 0 ? len : 1);
  if (image == NULL) return napi_throw_error(env, NULL, "out of memory"), NULL;
  if (len > 0) memcpy(image, buf, len); // an empty Buffer's data may be NULL
  *bad = xt_check(image, len, t);
  return image;
}

static napi_value string_or_null(napi_env env, const char *msg) {
  napi_value v;
  napi_status s = msg == NULL ? napi_get_null(env, &v) : napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &v);
  return s == napi_ok ? v : NULL;
}

// checkTables(tables): what xt_check finds wrong, or null.
static napi_value js_check_tables(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  struct xt_tables t;
  const char *bad;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return fail(env, NULL, "checkTables(tables)");
  void *image = xt_tables_arg(env, argv[0], &t, &bad);
  if (image == NULL) return NULL;
  free(image);
  return string_or_null(env, bad); // a static message: outlives the image
}

static const char *const algorithm_names[] = {[XT_ZLIB] = "zlib", [XT_LZO] = "lzo", [XT_ZSTD] = "zstd"};

// One piece as JS sees it: {kind: 'zero', length}, {kind: 'data', device, deviceOffset, length},
// {kind: 'decoded', device, deviceOffset, diskLength, compression, decodedOffset, length} (a compressed
// extent's) or, for an inline file, {kind: 'inline', bytes}.
static napi_value piece_js(napi_env env, const struct xt_plan *p, const struct xt_piece *piece) {
  napi_value o, kind, alg;
  int decoded = !piece->zero && (piece->x->flags & XT_EXT_COMPRESSED);
  const char *k = piece->zero ? "zero" : decoded ? "decoded" : "data";
  if (napi_create_object(env, &o) != napi_ok || napi_create_string_utf8(env, k, NAPI_AUTO_LENGTH, &kind) != napi_ok ||
      napi_set_named_property(env, o, "kind", kind) != napi_ok || !set_num(env, o, "length", (double)piece->length))
    return NULL;
  if (!piece->zero && (!set_num(env, o, "device", piece->device) || !set_num(env, o, "deviceOffset", (double)piece->device_offset)))
    return NULL;
  if (decoded) {
    struct xt_compressed z = xt_compressed_of(piece->x, p->csums);
    if (!set_num(env, o, "diskLength", z.disk_length) || !set_num(env, o, "decodedOffset", (double)piece->decoded_offset) ||
        napi_create_string_utf8(env, algorithm_names[z.algorithm], NAPI_AUTO_LENGTH, &alg) != napi_ok ||
        napi_set_named_property(env, o, "compression", alg) != napi_ok)
      return NULL;
  }
  return o;
}

static napi_value inline_js(napi_env env, const struct xt_plan *p) {
  napi_value o, kind, bytes;
  if (napi_create_object(env, &o) != napi_ok || napi_create_string_utf8(env, "inline", NAPI_AUTO_LENGTH, &kind) != napi_ok ||
      napi_set_named_property(env, o, "kind", kind) != napi_ok ||
      napi_create_buffer_copy(env, (size_t)(p->end - p->start), p->inline_bytes, NULL, &bytes) != napi_ok ||
      napi_set_named_property(env, o, "bytes", bytes) != napi_ok)
    return NULL;
  return o;
}

// The plan's pieces as an array; the tables are the caller's, freed after.
static napi_value plan_js(napi_env env, struct xt_plan *p) {
  napi_value arr, v;
  struct xt_piece piece;
  uint32_t k = 0;
  if (napi_create_array(env, &arr) != napi_ok) return NULL;
  if (p->inline_bytes != NULL && p->end > p->start) {
    return (v = inline_js(env, p)) != NULL && napi_set_element(env, arr, 0, v) == napi_ok ? arr : NULL;
  }
  while (xt_plan_next(p, &piece)) {
    if ((v = piece_js(env, p, &piece)) == NULL || napi_set_element(env, arr, k++, v) != napi_ok) return NULL;
  }
  return arr;
}

// planRead(tables, index, offset, size): the pieces of a read of `size` bytes at `offset` of the
// regular file at inode index `index`, planned by read.c as the FUSE read plans it. Throws for bad
// tables or arguments.
static napi_value js_plan_read(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  uint32_t index;
  int64_t off, size;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || napi_get_value_uint32(env, argv[1], &index) != napi_ok || napi_get_value_int64(env, argv[2], &off) != napi_ok ||
      napi_get_value_int64(env, argv[3], &size) != napi_ok || off < 0 || size < 0)
    return fail(env, NULL, "planRead(tables, index, offset >= 0, size >= 0)");
  struct xt_tables t;
  const char *bad;
  char msg[512];
  void *image = xt_tables_arg(env, argv[0], &t, &bad);
  if (image == NULL) return NULL;
  if (bad == NULL && index >= t.h->n_inodes) bad = "inode index out of range";
  if (bad == NULL && !S_ISREG(t.inodes[index].mode)) bad = "not a regular file";
  if (bad != NULL) {
    snprintf(msg, sizeof msg, "planRead: %s", bad);
    free(image);
    return fail(env, NULL, msg);
  }
  struct xt_plan p;
  xt_plan_read(&p, &t, index, NULL, (uint64_t)off, (uint64_t)size);
  napi_value out = plan_js(env, &p);
  free(image);
  return out;
}

struct plan_list {
  napi_env env;
  napi_value arr;
  uint32_t n;
  int failed;
};

static void prefetch_unit_js(void *ctx, const struct xt_pf_unit *u) {
  static const char *const kinds[] = {[XT_PF_SPAN] = "span", [XT_PF_INLINE] = "inline", [XT_PF_SLOW] = "slow"};
  struct plan_list *l = ctx;
  napi_env env = l->env;
  napi_value o, files, f, kind;
  if (l->failed) return;
  l->failed = napi_create_object(env, &o) != napi_ok || !set_num(env, o, "device", u->device) || !set_num(env, o, "start", (double)u->start) ||
              !set_num(env, o, "end", (double)u->end) || napi_create_array(env, &files) != napi_ok;
  for (uint32_t k = 0; !l->failed && k < u->n; k++) {
    const struct xt_pf_file *x = &u->files[k];
    l->failed = napi_create_object(env, &f) != napi_ok || !set_num(env, f, "index", x->index) || !set_num(env, f, "at", (double)x->at) ||
                napi_create_string_utf8(env, kinds[x->kind], NAPI_AUTO_LENGTH, &kind) != napi_ok || napi_set_named_property(env, f, "kind", kind) != napi_ok ||
                napi_set_element(env, files, k, f) != napi_ok;
  }
  if (!l->failed) l->failed = napi_set_named_property(env, o, "files", files) != napi_ok || napi_set_element(env, l->arr, l->n++, o) != napi_ok;
}

// prefetchPlan(tables, dirIndex, window): the units prefetch (prefetch.c) takes from that directory with
// a window of `window` bytes no reader retires: [{device, start, end, files: [{index, kind, at}]}],
// `kind` "span" (bytes at `at` in the device read [start, end)), "inline" or "slow" (read alone).
static napi_value js_prefetch_plan(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t dir;
  int64_t window;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || napi_get_value_uint32(env, argv[1], &dir) != napi_ok || napi_get_value_int64(env, argv[2], &window) != napi_ok || window < 0 ||
      (uint64_t)window > XT_PREFETCH_WINDOW_MAX)
    return fail(env, NULL, "prefetchPlan(tables, dirIndex, 0 <= window <= 256 MiB)");
  struct xt_tables t;
  const char *bad;
  char msg[512];
  void *image = xt_tables_arg(env, argv[0], &t, &bad);
  if (image == NULL) return NULL;
  if (bad == NULL && dir >= t.h->n_inodes) bad = "inode index out of range";
  if (bad == NULL && !S_ISDIR(t.inodes[dir].mode)) bad = "not a directory";
  if (bad != NULL) {
    snprintf(msg, sizeof msg, "prefetchPlan: %s", bad);
    free(image);
    return fail(env, NULL, msg);
  }
  struct plan_list l = {.env = env};
  l.failed = napi_create_array(env, &l.arr) != napi_ok;
  int err = l.failed ? 0 : xt_prefetch_plan(&t, dir, (uint64_t)window, prefetch_unit_js, &l);
  free(image);
  if (err != 0) return fail(env, NULL, "prefetchPlan: out of memory");
  return l.failed ? NULL : l.arr;
}

// decode(algorithm, stream, decodedLength, sectorSize): what read.c makes of a compressed extent's
// encoded stream (XT_ZLIB, XT_LZO, XT_ZSTD): a Buffer of the decoded bytes, at most decodedLength
// (1 to 128 KiB) of them, or a thrown "decode: <why>". On its own decoder state, freed before it returns.
static napi_value js_decode(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out;
  uint32_t alg, decoded_length, sector;
  bool is_buffer = false;
  void *in;
  size_t in_len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || napi_get_value_uint32(env, argv[0], &alg) != napi_ok || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &in, &in_len) != napi_ok || napi_get_value_uint32(env, argv[2], &decoded_length) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &sector) != napi_ok || decoded_length == 0 || decoded_length > XT_DECODED_MAX || in_len > XT_ENCODED_MAX)
    return fail(env, NULL, "decode(algorithm, stream: Buffer of at most 128 KiB, decodedLength: 1 to 128 KiB, sectorSize)");
  // Copies with no slack either side, so that a read past them is a sanitizer's report.
  uint8_t *copy = malloc(in_len > 0 ? in_len : 1), *dst = malloc((size_t)decoded_length + 1);
  struct xt_decoder d = {0};
  char why[256] = "", msg[300];
  size_t n = 0;
  int err = copy == NULL || dst == NULL ? ENOMEM : 0;
  if (err == 0) {
    if (in_len > 0) memcpy(copy, in, in_len);
    err = xt_decode(&d, alg, copy, in_len, sector, dst, (size_t)decoded_length + 1, &n, why, sizeof why);
    if (err == 0 && n > decoded_length) err = EIO, snprintf(why, sizeof why, "decodes to more than %u bytes", decoded_length);
  }
  xt_decoder_free(&d);
  napi_status s = err == 0 ? napi_create_buffer_copy(env, n, dst, NULL, &out) : napi_ok;
  free(copy);
  free(dst);
  if (err != 0) {
    snprintf(msg, sizeof msg, "decode: %s", err == ENOMEM ? "out of memory" : why);
    return fail(env, NULL, msg);
  }
  return s == napi_ok ? out : NULL;
}

// readFile(tables, index, offset, size): what the FUSE read of `size` bytes at `offset` of the regular
// file at inode index `index` answers (read.c: the plan, then pread(2) on the device fds packed in
// the tables, the same per-thread buffers), with no mount: {errno: 0, bytes}, or {errno, failed},
// `failed` the event a mount logs as `read failed` ({offset, device, deviceOffset, reason}).
// Throws for bad tables or arguments.
static napi_value js_read_file(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], out, v;
  uint32_t index;
  int64_t off, size;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || napi_get_value_uint32(env, argv[1], &index) != napi_ok || napi_get_value_int64(env, argv[2], &off) != napi_ok ||
      napi_get_value_int64(env, argv[3], &size) != napi_ok || off < 0 || size < 0 || size > (1 << 30))
    return fail(env, NULL, "readFile(tables, index, offset >= 0, 0 <= size <= 1 GiB)");
  struct engine *e = calloc(1, sizeof *e);
  if (e == NULL) return fail(env, NULL, "readFile: out of memory");
  const char *bad;
  char msg[512];
  void *image = xt_tables_arg(env, argv[0], &e->t, &bad);
  if (image == NULL) return free(e), NULL;
  if (bad == NULL && index >= e->t.h->n_inodes) bad = "inode index out of range";
  if (bad == NULL && !S_ISREG(e->t.inodes[index].mode)) bad = "not a regular file";
  if (bad == NULL && xt_delta_init(e) != 0) bad = "out of memory";
  if (bad != NULL) {
    snprintf(msg, sizeof msg, "readFile: %s", bad);
    free(image);
    free(e);
    return fail(env, NULL, msg);
  }
  struct xt_event ev = {0};
  e->test_event = &ev;
  struct xt_plan p; // as xt_read: clipped at EOF, inline bytes as they are, else the I/O
  xt_plan_read(&p, &e->t, index, NULL, (uint64_t)off, (uint64_t)size);
  const uint8_t *data = (const uint8_t *)p.inline_bytes;
  int err = p.inline_bytes != NULL || p.end == p.start ? 0 : xt_read_into(e, index, NULL, p.start, p.end, &data, 1);
  int ok = napi_create_object(env, &out) == napi_ok && set_num(env, out, "errno", err);
  if (ok && err == 0) {
    ok = napi_create_buffer_copy(env, (size_t)(p.end - p.start), data, NULL, &v) == napi_ok && napi_set_named_property(env, out, "bytes", v) == napi_ok;
  } else if (ok && ev.kind == XT_EV_READ_FAILED) {
    napi_value reason;
    ok = napi_create_object(env, &v) == napi_ok && set_num(env, v, "offset", (double)ev.offset) && set_num(env, v, "device", ev.device) &&
         set_num(env, v, "deviceOffset", (double)ev.device_offset) &&
         napi_create_string_utf8(env, ev.reason, NAPI_AUTO_LENGTH, &reason) == napi_ok && napi_set_named_property(env, v, "reason", reason) == napi_ok &&
         napi_set_named_property(env, out, "failed", v) == napi_ok;
  }
  xt_delta_destroy(e);
  free(image);
  free(e);
  return ok ? out : NULL;
}

struct acl_list {
  napi_env env;
  napi_value arr;
  uint32_t n;
  int failed;
};

static void acl_js(void *ctx, uint32_t index, const char *name, uint32_t len) {
  struct acl_list *l = ctx;
  napi_value o, v;
  if (l->failed) return;
  l->failed = napi_create_object(l->env, &o) != napi_ok || !set_num(l->env, o, "index", index) || !set_num(l->env, o, "size", len) ||
              napi_create_string_utf8(l->env, name, NAPI_AUTO_LENGTH, &v) != napi_ok || napi_set_named_property(l->env, o, "name", v) != napi_ok ||
              napi_set_element(l->env, l->arr, l->n++, o) != napi_ok;
}

// largeAcls(tables, limit?): {limit, acls: [{index, name, size}]}, the POSIX ACLs in `tables` longer
// than `limit` bytes as xattrs; without `limit`, the page size: the buffer the kernel reads ACLs of a
// FUSE filesystem into (ops.c). Checks (and copies) the tables as checkTables does.
static napi_value js_large_acls(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  int64_t limit = sysconf(_SC_PAGESIZE);
  napi_valuetype type = napi_undefined;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc >= 2) CHECK(napi_typeof(env, argv[1], &type));
  if (argc < 1 || (type != napi_undefined && (napi_get_value_int64(env, argv[1], &limit) != napi_ok || limit < 0)))
    return fail(env, NULL, "largeAcls(tables, limit >= 0?)");
  struct xt_tables t;
  const char *bad = NULL;
  struct xt_mapped *mapped = xt_mapped_arg(env, argv[0]); // checked when it was mapped
  void *image = NULL;
  if (mapped != NULL && !mapped->checked) bad = "not checked whole yet (call it once mounted)";
  else if (mapped != NULL) t = mapped->t;
  else if ((image = xt_tables_arg(env, argv[0], &t, &bad)) == NULL) return NULL;
  if (bad != NULL) {
    free(image);
    char msg[512];
    snprintf(msg, sizeof msg, "largeAcls: bad tables: %s", bad);
    return fail(env, NULL, msg);
  }
  struct acl_list l = {.env = env};
  l.failed = napi_create_array(env, &l.arr) != napi_ok;
  if (!l.failed) xt_acls_over(&t, (uint64_t)limit, acl_js, &l, mapped != NULL ? xt_mapped_drop_pages : NULL, mapped);
  if (mapped != NULL) xt_mapped_drop_pages(mapped);
  free(image);
  if (l.failed || napi_create_object(env, &out) != napi_ok || !set_num(env, out, "limit", (double)limit) ||
      napi_set_named_property(env, out, "acls", l.arr) != napi_ok)
    return NULL;
  return out;
}

// The engine a call's first argument (a mount() handle) names; NULL with an error thrown naming `usage`.
static struct engine *engine_arg(napi_env env, napi_callback_info info, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  struct engine *e;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_external(env, argv[0], (void **)&e) != napi_ok)
    return fail(env, NULL, usage), NULL;
  return e;
}

// viewStats(handle): what the view served since mount and the image's totals (stats.c).
static napi_value js_view_stats(napi_env env, napi_callback_info info) {
  struct engine *e = engine_arg(env, info, "viewStats(handle)");
  if (e == NULL) return NULL;
  const struct xt_stats *s = &e->stats;
  napi_value out;
  if (napi_create_object(env, &out) != napi_ok || !set_num(env, out, "opens", (double)atomic_load(&s->opens)) ||
      !set_num(env, out, "filesOpened", (double)atomic_load(&s->files_opened)) || !set_num(env, out, "reads", (double)atomic_load(&s->reads)) ||
      !set_num(env, out, "readBytes", (double)atomic_load(&s->read_bytes)) || !set_num(env, out, "pushedBytes", (double)atomic_load(&s->pushed_bytes)) ||
      !set_num(env, out, "filesTotal", (double)s->files_total) || !set_num(env, out, "bytesTotal", (double)s->bytes_total))
    return NULL;
  return out;
}

// prefetchStats(handle): {window, pending, storedFiles, storedBytes, failedReads} (prefetch.c).
static napi_value js_prefetch_stats(napi_env env, napi_callback_info info) {
  struct engine *e = engine_arg(env, info, "prefetchStats(handle)");
  if (e == NULL) return NULL;
  struct xt_prefetch_stats st = {0};
  if (!e->done) xt_prefetch_stats(e, &st);
  napi_value out;
  if (napi_create_object(env, &out) != napi_ok || !set_num(env, out, "window", (double)st.window) || !set_num(env, out, "pending", (double)st.pending) ||
      !set_num(env, out, "storedFiles", (double)st.stored_files) || !set_num(env, out, "storedBytes", (double)st.stored_bytes) ||
      !set_num(env, out, "failedReads", (double)st.failed_reads))
    return NULL;
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
    {"layout", NULL, js_layout, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL},
    {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_enumerable, NULL},
    {"applyDelta", NULL, xt_js_apply_delta, NULL, NULL, NULL, napi_enumerable, NULL},
    {"tainted", NULL, xt_js_tainted, NULL, NULL, NULL, napi_enumerable, NULL},
    {"generation", NULL, xt_js_generation, NULL, NULL, NULL, napi_enumerable, NULL},
    {"eventsLost", NULL, js_events_lost, NULL, NULL, NULL, napi_enumerable, NULL},
    {"fileSize", NULL, xt_js_file_size, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setLease", NULL, js_set_lease, NULL, NULL, NULL, napi_enumerable, NULL},
    {"viewStats", NULL, js_view_stats, NULL, NULL, NULL, napi_enumerable, NULL},
    {"prefetchStats", NULL, js_prefetch_stats, NULL, NULL, NULL, napi_enumerable, NULL},
    {"checkTables", NULL, js_check_tables, NULL, NULL, NULL, napi_enumerable, NULL},
    {"planRead", NULL, js_plan_read, NULL, NULL, NULL, napi_enumerable, NULL},
    {"prefetchPlan", NULL, js_prefetch_plan, NULL, NULL, NULL, napi_enumerable, NULL},
    {"checkDelta", NULL, xt_js_check_delta, NULL, NULL, NULL, napi_enumerable, NULL},
    {"readFile", NULL, js_read_file, NULL, NULL, NULL, napi_enumerable, NULL},
    {"largeAcls", NULL, js_large_acls, NULL, NULL, NULL, napi_enumerable, NULL},
    {"decode", NULL, js_decode, NULL, NULL, NULL, napi_enumerable, NULL},
    {"shardPlan", NULL, xt_js_shard_plan, NULL, NULL, NULL, napi_enumerable, NULL},
    {"shardVisible", NULL, xt_js_shard_visible, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  CHECK(xt_tables_file_init(env, exports));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
