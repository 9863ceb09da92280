// ext4BulkMap(options): the N-API face of the ext4 bulk mapper (ext4.c). The contract is documented
// in src/linux/index.ts. Synchronous: export has nothing else to do meanwhile, and the filesystem is
// frozen for exactly as long as this runs.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bulk_napi.h"
#include "ext4.h"

static bool parse_skip(napi_env env, napi_value opts, uint32_t **skip, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!bulk_array_of(env, opts, "skip", &arr, &count)) return false;
  *skip = calloc(count ? count : 1, sizeof **skip);
  *n = count;
  for (uint32_t k = 0; k < count; k++) {
    uint64_t ino;
    if (napi_get_element(env, arr, k, &el) != napi_ok || !get_uint(env, el, "skip", UINT32_MAX, &ino)) return false;
    (*skip)[k] = (uint32_t)ino;
  }
  return true;
}

static napi_value result_of(napi_env env, const struct e4_result *r, uint64_t allocated) {
  napi_value obj, samples;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  if (napi_create_object(env, &obj) != napi_ok || !bulk_set_num(env, obj, "inodes", r->inodes) || !bulk_set_num(env, obj, "dirs", r->dirs) ||
      !bulk_set_num(env, obj, "entries", r->entries) || !bulk_set_bool(env, obj, "byteNames", r->byte_names) ||
      !bulk_set_bool(env, obj, "inlineData", r->inline_data) || !bulk_set_bool(env, obj, "directIo", r->direct_io) ||
      !bulk_set_num(env, obj, "bodyBytes", r->body_bytes) || !bulk_set_num(env, obj, "tableBytes", r->table_bytes) ||
      !bulk_set_num(env, obj, "peakRssKiB", (uint64_t)ru.ru_maxrss) || !bulk_set_num(env, obj, "allocatedBytes", allocated) || (samples = bulk_samples(env, r->samplers, r->ndisks)) == NULL ||
      napi_set_named_property(env, obj, "samples", samples) != napi_ok)
    return NULL;
  return obj;
}

napi_value ext4_bulk_map(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct e4_job job = {0};
  struct bulk_js_progress progress;
  struct bulk_segment *segs = NULL;
  uint32_t *skip = NULL;
  uint64_t root, carry, fd;
  napi_value out = NULL;
  char *device = bulk_device_path(env, argv[0]);
  if (device == NULL) return NULL;
  if (bulk_prop_uint(env, argv[0], "root", UINT32_MAX, &root) && bulk_prop_uint(env, argv[0], "carryMax", 1 << 20, &carry) &&
      bulk_prop_uint(env, argv[0], "fd", INT32_MAX, &fd) && bulk_parse_segments(env, argv[0], &segs, &job.nsegments) &&
      parse_skip(env, argv[0], &skip, &job.nskip) && bulk_parse_progress(env, argv[0], &progress)) {
    job.progress = &progress.p;
    job.device = device, job.root = (uint32_t)root, job.carry_max = carry, job.fd = (int)fd, job.segments = segs, job.skip = skip;
    struct e4_result r;
    e4_map(&job, &r);
    if (r.outcome == E4_OK) out = result_of(env, &r, progress.p.bytes);
    else bulk_throw_outcome(env, r.outcome == E4_REFUSED, r.why);
    e4_result_free(&r);
  }
  free(device), free(segs), free(skip);
  return out;
}
