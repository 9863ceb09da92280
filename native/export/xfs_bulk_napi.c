// xfsBulkMap(options): the N-API face of the XFS bulk mapper (xfs_bulk.c). The contract is documented
// in src/linux/index.ts. Synchronous: export has nothing else to do meanwhile, and the filesystem is
// frozen for exactly as long as this runs.
#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "bulk_napi.h"
#include "xfs_bulk.h"

static napi_value result_of(napi_env env, const struct xb_result *r, uint64_t allocated) {
  napi_value obj, samples;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  if (napi_create_object(env, &obj) != napi_ok || !bulk_set_num(env, obj, "inodes", r->inodes) || !bulk_set_num(env, obj, "dirs", r->dirs) ||
      !bulk_set_num(env, obj, "entries", r->entries) || !bulk_set_bool(env, obj, "byteNames", r->byte_names) ||
      !bulk_set_num(env, obj, "bodyBytes", r->body_bytes) || !bulk_set_num(env, obj, "tableBytes", r->table_bytes) ||
      !bulk_set_num(env, obj, "windows", r->windows) || !bulk_set_num(env, obj, "handleOpens", r->handle_opens) ||
      !bulk_set_num(env, obj, "peakRssKiB", (uint64_t)ru.ru_maxrss) || !bulk_set_num(env, obj, "allocatedBytes", allocated) || (samples = bulk_samples(env, r->samplers, r->ndisks)) == NULL ||
      napi_set_named_property(env, obj, "samples", samples) != napi_ok)
    return NULL;
  return obj;
}

napi_value xfs_bulk_map(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct xb_job job = {0};
  struct bulk_js_progress progress;
  struct bulk_segment *segs = NULL;
  uint64_t *skip = NULL;
  uint64_t root, fd, root_fd, window = 0;
  napi_value w;
  bool has_window = false;
  napi_value out = NULL;
  char *device = bulk_device_path(env, argv[0]);
  if (device == NULL) return NULL;
  if (bulk_prop_uint(env, argv[0], "root", BULK_SAFE_INTEGER, &root) && bulk_prop_uint(env, argv[0], "rootFd", INT32_MAX, &root_fd) &&
      bulk_prop_uint(env, argv[0], "fd", INT32_MAX, &fd) && bulk_parse_segments(env, argv[0], &segs, &job.nsegments) &&
      bulk_parse_skip(env, argv[0], &skip, &job.nskip) && napi_has_named_property(env, argv[0], "windowExtents", &has_window) == napi_ok &&
      (!has_window || (napi_get_named_property(env, argv[0], "windowExtents", &w) == napi_ok && get_uint(env, w, "windowExtents", 1 << 19, &window))) &&
      bulk_parse_progress(env, argv[0], &progress)) {
    job.progress = &progress.p;
    job.window_extents = (uint32_t)window;
    job.device = device;
    job.root = root, job.root_fd = (int)root_fd, job.fd = (int)fd, job.segments = segs, job.skip = skip;
    struct xb_result r;
    xb_map(&job, &r);
    if (r.outcome == XB_OK) out = result_of(env, &r, progress.p.bytes);
    else bulk_throw_outcome(env, r.outcome == XB_REFUSED, r.why);
    xb_result_free(&r);
  }
  free(device), free(segs), free(skip);
  return out;
}
