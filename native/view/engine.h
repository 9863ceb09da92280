// The native view engine: what its C files share. engine.c owns the N-API glue and the session thread,
// ops.c the FUSE operations, read.c the read path, config.c the per-open config-ID check.
#ifndef EXTFS_VIEW_ENGINE_H
#define EXTFS_VIEW_ENGINE_H

#define FUSE_USE_VERSION 314 // FUSE_MAKE_VERSION(3, 14): libfuse3 low-level API, as in Debian 12
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#include "tables.h"

// Entry, attribute and negative-lookup timeouts in seconds: the image never changes while mounted.
#define XT_TTL 86400.0
// How long an open waits for JS to judge a changed config-ID record before refusing it (ESTALE).
#define XT_JUDGE_TIMEOUT_S 5

// Identity of the config-ID record file: the initiator replaces it by rename, so any change shows.
struct cfg_stamp {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtim, ctim;
};

struct engine {
  struct xt_tables t;
  struct fuse_session *se;
  char *mountpoint;
  int no_opendir; // the kernel opens directories without asking (FUSE_CAP_NO_OPENDIR_SUPPORT)
  pthread_t loop;

  // Config check (config.c). Only an "ok" verdict is cached, with the record stamp it was given for.
  char *record_path;
  pthread_mutex_t cfg_mu;
  int cfg_ok;
  struct cfg_stamp cfg_stamp;

  // Into JS: `judge` blocks a FUSE worker until ConfigWatch.check() answers; `events` never blocks
  // (log lines for refused opens and failed reads). Both are released after the loop has ended.
  napi_threadsafe_function judge, events;
  // Guards calls into those against Node tearing them down at process exit with the view mounted.
  pthread_rwlock_t js_lock;
  int js_closed;

  // Unmount (engine.c): async work on libuv's pool, so the JS thread stays free to answer `judge`.
  napi_async_work unmount_work;
  napi_deferred unmount_deferred;
  int unmount_err; // 0, or the errno umount(2) failed with (the view keeps serving)
  int unmounting;
  int done;     // torn down: unmounted, everything but this struct freed
  int orphaned; // JS dropped the handle: free the struct once done
};

// A log event for JS (engine.c delivers it; JS turns the inode index into a path and logs with pino).
enum xt_event_kind { XT_EV_OPEN_REFUSED = 1, XT_EV_READ_FAILED = 2 };
struct xt_event {
  int kind;
  uint32_t index;         // inode index
  uint64_t offset;        // read: file offset of the failed piece
  uint32_t device;        // read: device index
  uint64_t device_offset; // read: byte offset on the device
  char reason[512];
};
// Call into JS through `fn` unless the environment is going away; returns napi_closing then.
napi_status xt_call_js(struct engine *e, napi_threadsafe_function fn, void *data, napi_threadsafe_function_call_mode mode);
// Queue an event without blocking; dropped (never stalls a request) when the queue is full.
void xt_post_event(struct engine *e, const struct xt_event *ev);

// ops.c
extern const struct fuse_lowlevel_ops xt_ops;
const struct xt_inode *xt_node(const struct engine *e, fuse_ino_t nodeid);

// read.c
void xt_read(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, struct fuse_file_info *fi);

// config.c
int xt_config_init(struct engine *e, const char *record_path);
void xt_config_destroy(struct engine *e);
// On the JS thread at mount: judge once and cache an "ok", so that opens never wait for JS while
// the record stays unchanged (a JS thread busy in a synchronous call would stall them otherwise).
void xt_config_prime(napi_env env, struct engine *e, napi_value judge);
// 0 when opens may be served, else ESTALE (and the refusal is logged).
int xt_config_check(struct engine *e, uint32_t index);
// The call_js of the `judge` threadsafe function.
void xt_judge_js(napi_env env, napi_value fn, void *context, void *data);

#endif
