// The native view engine: what its C files share. engine.c owns the N-API glue and the session
// thread, check.c the table and delta checks, ops.c the FUSE operations, plan.c the plan of a read and
// read.c its I/O, config.c the per-open config-ID check and the lease, delta.c applying deltas, push.c
// the push-ahead of sequential readers, prefetch.c the prefetch of small files. check.c and plan.c
// call neither libfuse nor N-API (fuzz/c/).
#ifndef EXTFS_VIEW_ENGINE_H
#define EXTFS_VIEW_ENGINE_H

#define FUSE_USE_VERSION 314 // FUSE_MAKE_VERSION(3, 14): libfuse3 low-level API, as in Debian 12
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>

#include "tables.h"

// Entry, attribute and negative-lookup timeouts in seconds: the image never changes while mounted.
#define XT_TTL 86400.0
// How long an open waits for JS to judge a changed config-ID record before refusing it (ESTALE).
#define XT_JUDGE_TIMEOUT_S 5

// A file's extent list as a delta replaced it (engine.c installs it, read.c serves through it). The
// extents never change once published; the two counters do. Kept until unmount (see delta.c).
struct xt_map {
  struct xt_map *older;     // every map installed so far, newest first: freed at teardown
  uint64_t generation;      // the map generation that installed it
  _Atomic uint64_t fresh;   // bytes served through this map (since it was installed)
  _Atomic uint32_t tainted; // the file was served under an earlier map: superseded bytes may be out
  uint32_t count;
  // What ext[]'s copy_first and csum_off point into: the sections of the delta that installed it.
  const struct xt_copy *copies;
  const char *csums;
  void *owned; // that delta, kept while any of its maps may be read: freed with this map at teardown
  struct xt_extent ext[];
};
typedef _Atomic(struct xt_map *) xt_map_ptr;

// The device fds a read may use: the tables' own, then those deltas added. Replaced whole (by
// pointer) when a delta adds devices; indexes only ever grow, so any set a reader holds covers the
// extents of every map it could have loaded before it.
struct xt_devset {
  struct xt_devset *older; // freed at teardown
  uint32_t n;
  const struct xt_device *d;
  struct xt_device own[]; // d points here, except in the first set (the tables' devices)
};

// Identity of the config-ID record file: the initiator replaces it by rename, so any change shows.
struct cfg_stamp {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtim, ctim;
};

// Tables mapped from a file (tables_file.c: version 2 manifests, loaded by load2.c): shared by the
// JS handle (mapTables) and the engine that mounts them; unmapped when the last lets go.
struct xt_mapped {
  void *image;
  uint64_t len;
  int fd; // the tables file (the handle's own dup): device fds are written through it
  struct xt_tables t; // sections only (xt_check_sections) until a mount checked it all
  int checked;        // a mount's xt_check accepted it
  _Atomic int refs;
};
// Drop the pages of a mapped image from this process (they stay in the page cache): the pace of a
// check over it (xt_check_paced), so that checking does not keep it all resident.
void xt_mapped_drop_pages(void *m);
// The mapped tables of a mapTables() handle `v`, or NULL when `v` is none (a Buffer, say).
struct xt_mapped *xt_mapped_arg(napi_env env, napi_value v);
void xt_mapped_unref(struct xt_mapped *m);
napi_status xt_tables_file_init(napi_env env, napi_value exports);

// What the view served since mount (stats.c).
struct xt_stats {
  _Atomic uint64_t opens;        // opens served (refused ones are JS's Refusals)
  _Atomic uint64_t files_opened; // distinct regular files opened
  _Atomic uint64_t reads;        // read requests answered with data (or EOF)
  _Atomic uint64_t read_bytes;   // bytes in those answers
  _Atomic uint64_t pushed_bytes; // bytes push-ahead stored ahead of the reader (push.c)
  _Atomic uint8_t *opened;       // one byte per inode: opened at least once
  uint64_t files_total, bytes_total; // regular files of the image and their sizes, summed at mount
  uint64_t shown_inodes, shown_blocks512; // inodes the view shows (of every kind) and their st_blocks
};

struct engine {
  struct xt_tables t;
  struct xt_mapped *mapped; // the tables' mapping when mounted from a file; else t.image is malloc'd
  struct fuse_session *se;
  char *mountpoint;
  int no_opendir; // the kernel opens directories without asking (FUSE_CAP_NO_OPENDIR_SUPPORT)
  pthread_t loop;

  // Config check (config.c). Only an "ok" verdict is cached, with the record stamp it was given for.
  char *record_path;
  pthread_mutex_t cfg_mu;
  int cfg_ok;
  struct cfg_stamp cfg_stamp;
  // Opens and reads are served without asking JS until then (CLOCK_MONOTONIC ns); INT64_MAX: no lease.
  _Atomic int64_t lease_until_ns;

  // Into JS: `judge` blocks a FUSE worker until ConfigWatch.check() answers; `events` never blocks
  // (log lines for refused opens and failed reads). Both are released after the loop has ended.
  napi_threadsafe_function judge, events;
  // Events that could not be queued (the queue full under a burst, or no memory): a backup with any
  // cannot be judged clean, since a refused open or failed read may be among them (eventsLost()).
  _Atomic uint64_t events_lost;
  // Guards calls into those against Node tearing them down at process exit with the view mounted.
  pthread_rwlock_t js_lock;
  int js_closed;

  // Deltas (delta.c). Written only on the JS thread; read by the workers with atomic loads alone.
  //   maps[index]: the inode's current map, NULL while it still has the tables' extents; the array
  //   (8 bytes per inode) is allocated by the first delta. served[index] (1 byte per inode, from mount):
  //   1 once a read of the inode was served. generation: 0 at mount, +1 per delta.
  _Atomic(xt_map_ptr *) maps;
  _Atomic uint8_t *served;
  _Atomic(struct xt_devset *) devs;
  _Atomic uint64_t generation;
  struct xt_map *all_maps;
  uint32_t *remapped; // inode indexes that have a map, in installation order (for tainted())
  uint32_t n_remapped, cap_remapped;

  // Unmount (engine.c): async work on libuv's pool, so the JS thread stays free to answer `judge`.
  napi_async_work unmount_work;
  napi_deferred unmount_deferred;
  int unmount_err; // 0, or the errno umount(2) failed with (the view keeps serving)
  int unmounting;
  int done;     // torn down: unmounted, everything but this struct freed
  struct xt_push *push; // push-ahead (push.c): started and stopped by the session thread
  struct xt_prefetch *prefetch; // prefetch of small files (prefetch.c): the same
  int64_t prefetch_window;      // its window in bytes as mount() was given it; -1: the default
  struct xt_stats stats;
  // A shard view (shard.c): 1 byte per inode, 1 where the view shows it; NULL: every inode (a whole
  // view). Set at mount, never changed: xt_node, lookup and readdir hide the rest.
  uint8_t *visible;
  int orphaned; // JS dropped the handle: free the struct once done
  // No mount (the addon's readFile, for tests): events go here instead of to JS, the first one kept.
  struct xt_event *test_event;
};

// A log event for JS (engine.c delivers it; JS turns the inode index into a path and logs with pino).
enum xt_event_kind { XT_EV_OPEN_REFUSED = 1, XT_EV_READ_FAILED = 2, XT_EV_READ_REFUSED = 3, XT_EV_ACL_UNSERVED = 4 };
struct xt_event {
  int kind;
  uint32_t index;         // inode index
  uint64_t offset;        // read: file offset of the failed piece
  uint32_t device;        // read: device index
  uint64_t device_offset; // read: byte offset on the device
  uint32_t value_len;     // acl: the ACL's length as an xattr
  uint64_t asked;         // acl: the buffer size the kernel asked with
  char reason[512];       // acl: the xattr's name
};
// Call into JS through `fn` unless the environment is going away; returns napi_closing then.
napi_status xt_call_js(struct engine *e, napi_threadsafe_function fn, void *data, napi_threadsafe_function_call_mode mode);
// Queue an event without blocking; dropped (never stalls a request) when the queue is full. With no
// mount (readFile, for tests) the first event is kept in e->test_event.
void xt_post_event(struct engine *e, const struct xt_event *ev);

// engine.c, for the addon's test functions (checkTables, planRead, checkDelta): a private, aligned
// copy of the tables Buffer `v` (the caller frees it), checked into `t` with xt_check (*bad: its
// verdict). NULL, with a JS exception pending, when `v` is no Buffer or memory ran out.
void *xt_tables_arg(napi_env env, napi_value v, struct xt_tables *t, const char **bad);

// ops.c
extern const struct fuse_lowlevel_ops xt_ops;
const struct xt_inode *xt_node(const struct engine *e, fuse_ino_t nodeid);
// Calls `each` for every POSIX ACL in checked tables `t` whose xattr is longer than `limit` bytes, in
// inode order: those the kernel cannot pass when `limit` is the buffer it reads ACLs into. pace(arg),
// when not NULL, every 65536 inodes (as xt_check_paced).
void xt_acls_over(const struct xt_tables *t, uint64_t limit, void (*each)(void *ctx, uint32_t index, const char *name, uint32_t len), void *ctx,
                  void (*pace)(void *arg), void *arg);

// read.c: the plan of a read. Pure (no engine, no I/O): the FUSE read carries it out, and the addon's
// planRead (for tests) reports it.
// One piece of a reply, in file order: `length` zeros, or `length` bytes of device `device` at
// `device_offset`, or (x is compressed) `length` bytes at `decoded_offset` of what the extent's
// encoded stream at `device_offset` decodes to.
struct xt_piece {
  int zero; // a hole, an unwritten range or the hole up to EOF
  uint32_t device;
  uint64_t file_offset, device_offset, length, decoded_offset;
  const struct xt_extent *x; // the extent the bytes come from (its copies and checksums); NULL for zeros
};
// A reply being planned: bytes [start, end) of one file, walked piece by piece with xt_plan_next.
struct xt_plan {
  uint64_t start, end;      // the request clipped at EOF; start == end: an empty reply
  const char *inline_bytes; // an inline file: the reply is these end - start bytes, and there are no pieces
  const struct xt_extent *ext;
  const struct xt_copy *copies; // where ext[]'s copies and checksums are: the tables', or a delta's
  const char *csums;
  uint32_t count, i; // ext[i]: the next extent that may hold a piece
  uint64_t pos;      // file offset of the next piece
};
// A read of `size` bytes at `off` of regular file `index` in checked tables `t`, through map `m`
// (NULL: the tables' extents).
void xt_plan_read(struct xt_plan *p, const struct xt_tables *t, uint32_t index, const struct xt_map *m, uint64_t off, uint64_t size);
// Bytes [start, end) (within the file) through `count` extents, sorted and disjoint (as xt_check sees to).
void xt_plan_range(struct xt_plan *p, const struct xt_extent *ext, uint32_t count, uint64_t start, uint64_t end);
// Bytes [start, end) of regular file `n` (not inline) of tables `t` through map `m` (NULL: the tables'
// extents, copies and checksums).
void xt_plan_through(struct xt_plan *p, const struct xt_tables *t, const struct xt_inode *n, const struct xt_map *m, uint64_t start, uint64_t end);
// The next piece into *piece: 1, or 0 once [start, end) is covered.
int xt_plan_next(struct xt_plan *p, struct xt_piece *piece);
// read.c: the I/O
void xt_read(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, struct fuse_file_info *fi);
int xt_read_into(struct engine *e, uint32_t index, struct xt_map *m, uint64_t start, uint64_t end, const uint8_t **data, int report);
// `len` bytes of device `d` at `doff` into `dst` (offset, length and dst aligned to 4096), of which at
// least `need` must exist (the rest may run past the device's end): 0, or EIO. Reports nothing.
int xt_read_aligned(const struct xt_device *d, uint8_t *dst, uint64_t doff, size_t len, size_t need);

// push.c: push-ahead of sequential readers. start/stop on the session thread, around the loop;
// free at teardown (a delta on the JS thread may still look at it after the loop ended).
void xt_push_start(struct engine *e);
void xt_push_stop(struct engine *e);
void xt_push_free(struct engine *e);
// A read request through open file `fh` of inode `index` (a regular file) for [start, end) was served.
void xt_push_read(struct engine *e, uint64_t fh, uint32_t index, uint64_t start, uint64_t end);
// Open file `fh` of inode `index` was closed (FUSE release): the job it started ends.
void xt_push_release(struct engine *e, uint64_t fh, uint32_t index);
// A delta replaced these files' maps (sorted by index): end their jobs and wait (bounded) for the
// chunks in flight, so that no store of the old map's bytes lands after the delta drops the pages.
void xt_push_settle(struct engine *e, const struct xt_delta_file *files, uint32_t n);

// prefetch.c: prefetch of the small files a reader will open next. start/stop/free as push-ahead's;
// start reads the window from e->prefetch_window.
void xt_prefetch_start(struct engine *e);
void xt_prefetch_stop(struct engine *e);
void xt_prefetch_free(struct engine *e);
#define XT_PREFETCH_WINDOW_MAX ((uint64_t)256 << 20) // the largest window mount() accepts (bytes)
// Directory `dir`'s listing (readdirplus) gave the kernel positions [from, to) (0 and 1: "." and "..").
void xt_prefetch_listed(struct engine *e, uint32_t dir, uint64_t from, uint64_t to);
// Regular file `index` was opened (its config-ID check passed).
void xt_prefetch_open(struct engine *e, uint32_t index);
// A read request at offset 0 of regular file `index` reached the view: its first page was not cached.
void xt_prefetch_read(struct engine *e, uint32_t index);
// What prefetch did since mount: the window (0: off), bytes taken and not yet retired, files and
// bytes stored in the page cache, device reads that failed (their files were not stored).
struct xt_prefetch_stats {
  uint64_t window, pending, stored_files, stored_bytes, failed_reads;
};
void xt_prefetch_stats(struct engine *e, struct xt_prefetch_stats *out);
// One unit of prefetch's work: a device read [start, end) of `device` (none when start == end) and
// the files whose bytes it holds, or one file read through the read path (XT_PF_SLOW).
enum xt_pf_kind { XT_PF_SPAN, XT_PF_INLINE, XT_PF_SLOW };
#define XT_PF_UNIT_FILES 256 // files per device read, at most
struct xt_pf_file {
  uint32_t index;
  enum xt_pf_kind kind;
  uint64_t size;
  uint64_t at;        // XT_PF_SPAN: its bytes' offset in the unit's device read
  struct xt_map *map; // what it was planned through (NULL: the tables' extents)
};
struct xt_pf_unit {
  uint32_t device;
  uint64_t start, end, need; // need: bytes of the read that files use (the rest is alignment)
  uint32_t n;
  struct xt_pf_file files[XT_PF_UNIT_FILES];
};
// For tests (the addon's prefetchPlan): the units prefetch takes, in order, from directory `dir` of
// checked tables `t` with a window of `window` bytes that no reader retires; nothing read or stored.
// 0, or ENOMEM.
int xt_prefetch_plan(const struct xt_tables *t, uint32_t dir, uint64_t window, void (*each)(void *ctx, const struct xt_pf_unit *u), void *ctx);
// As xt_push_settle, for prefetch's device reads in flight.
void xt_prefetch_settle(struct engine *e, const struct xt_delta_file *files, uint32_t n);

// shard.c: one image split n ways (docs/shards.md). XT_SHARD_NONE: a directory with entries, in no
// shard (shown by those it leads to).
#define XT_SHARDS_MAX 65536u
#define XT_SHARD_NONE UINT32_MAX
struct xt_shard_sum {
  uint64_t files, bytes, inodes; // regular files (empty ones included), their bytes, every inode of the shard
  uint64_t largest;              // bytes of its largest file
};
// The plan of checked tables `t` split n ways: shard_of[n_inodes] and sums[n]. 0, ENOMEM or EINVAL (n).
int xt_shard_plan(const struct xt_tables *t, uint32_t n, uint32_t *shard_of, struct xt_shard_sum *sums);
// What shard i of n shows, into visible[n_inodes]: its inodes, the root and every directory on a path
// to one of them. 0, ENOMEM or EINVAL.
int xt_shard_visible(const struct xt_tables *t, uint32_t i, uint32_t n, uint8_t *visible);
// Whether a view shows inode `index` (a whole view shows every one).
static inline int xt_visible(const struct engine *e, uint32_t index) {
  return e->visible == NULL || e->visible[index];
}
napi_value xt_js_shard_plan(napi_env env, napi_callback_info info);    // for tests and inspect, no mount
napi_value xt_js_shard_visible(napi_env env, napi_callback_info info); // for tests, no mount

// stats.c: what the view served.
int xt_stats_init(struct engine *e); // at mount: 0 or ENOMEM
void xt_stats_destroy(struct engine *e);
void xt_stats_open(struct engine *e, uint32_t index);
void xt_stats_read(struct engine *e, uint64_t len);
void xt_stats_pushed(struct engine *e, uint64_t len);

// delta.c
int xt_delta_init(struct engine *e); // at mount: served[] and the first device set; 0 or ENOMEM
void xt_delta_destroy(struct engine *e);
// The map a read resolves through: NULL for the tables' extents. One load per level, no lock.
static inline struct xt_map *xt_map_of(struct engine *e, uint32_t index) {
  xt_map_ptr *maps = atomic_load_explicit(&e->maps, memory_order_acquire);
  return maps == NULL ? NULL : atomic_load_explicit(&maps[index], memory_order_acquire);
}
// After a read served `len` bytes of inode `index` through `m` (NULL: the tables' extents), before
// replying: remembers the read, and taints the file if a delta replaced `m` meanwhile.
void xt_note_served(struct engine *e, uint32_t index, struct xt_map *m, uint64_t len);
// Whether a checked delta's files (sorted by index) include inode `index`.
int xt_delta_has(const struct xt_delta_file *files, uint32_t n, uint32_t index);
napi_value xt_js_apply_delta(napi_env env, napi_callback_info info);
napi_value xt_js_tainted(napi_env env, napi_callback_info info);
napi_value xt_js_generation(napi_env env, napi_callback_info info);
napi_value xt_js_file_size(napi_env env, napi_callback_info info);
napi_value xt_js_check_delta(napi_env env, napi_callback_info info); // for tests, no mount

// config.c
int xt_config_init(struct engine *e, const char *record_path);
void xt_config_destroy(struct engine *e);
// On the JS thread at mount: judge once and cache an "ok", so that opens never wait for JS while
// the record stays unchanged (a JS thread busy in a synchronous call would stall them otherwise).
void xt_config_prime(napi_env env, struct engine *e, napi_value judge);
// 0 when opens may be served, else ESTALE (and the refusal is logged).
int xt_config_check(struct engine *e, uint32_t index);
// Reads: 0 while the lease is fresh (one clock read), else JS renews it or the read is ESTALE (logged).
int xt_read_check(struct engine *e, uint32_t index, uint64_t offset);
// 1 while the lease is fresh (or there is none): one clock read, never asks JS.
int xt_lease_fresh(struct engine *e);
// Serve without asking JS for `ms` more milliseconds; ms < 0: no lease (never expires).
void xt_lease_set(struct engine *e, int64_t ms);
// The call_js of the `judge` threadsafe function.
void xt_judge_js(napi_env env, napi_value fn, void *context, void *data);

#endif
