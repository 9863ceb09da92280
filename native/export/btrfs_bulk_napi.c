// btrfsBulkMap(options): the N-API face of the btrfs bulk mapper (btrfs_bulk.c). The contract is
// documented in src/linux/index.ts. Synchronous: export has nothing else to do meanwhile, and the
// snapshot it reads cannot change.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "btrfs_bulk.h"
#include "bulk_napi.h"

#define SAFE BULK_SAFE_INTEGER

// segments: [{ logical, length, copies: [{ disk, offset }] }], copies[0] the one read.
static bool parse_segment(napi_env env, napi_value el, struct bb_segment *s) {
  napi_value copies, c;
  uint32_t n;
  if (!bulk_prop_uint(env, el, "logical", SAFE, &s->logical) || !bulk_prop_uint(env, el, "length", SAFE, &s->length) || !bulk_array_of(env, el, "copies", &copies, &n))
    return false;
  if (n < 1 || n > BB_MAX_COPIES) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "a segment has 1 to 4 copies");
    return false;
  }
  s->ncopies = n;
  for (uint32_t k = 0; k < n; k++) {
    uint64_t disk;
    if (napi_get_element(env, copies, k, &c) != napi_ok || !bulk_prop_uint(env, c, "disk", BB_MAX_DISKS - 1, &disk) ||
        !bulk_prop_uint(env, c, "offset", SAFE, &s->copy[k].offset))
      return false;
    s->copy[k].disk = (uint32_t)disk;
  }
  return true;
}

static bool parse_segments(napi_env env, napi_value opts, struct bb_segment **segs, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!bulk_array_of(env, opts, "segments", &arr, &count)) return false;
  if (count > BB_MAX_SEGMENTS) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "too many segments");
    return false;
  }
  *segs = calloc(count ? count : 1, sizeof **segs);
  if (*segs == NULL) return throw_errno(env, "malloc", ENOMEM), false;
  *n = count;
  for (uint32_t k = 0; k < count; k++)
    if (napi_get_element(env, arr, k, &el) != napi_ok || !parse_segment(env, el, &(*segs)[k])) return false;
  return true;
}

// disks: the segments' disk index of each of the body's disks, in the body's order.
static bool set_disks(napi_env env, napi_value obj, const struct bb_result *r) {
  napi_value arr, v;
  if (napi_create_array_with_length(env, r->ndisks, &arr) != napi_ok) return false;
  for (uint32_t i = 0; i < r->ndisks; i++)
    if (napi_create_uint32(env, r->disk_order[i], &v) != napi_ok || napi_set_element(env, arr, i, v) != napi_ok) return false;
  return napi_set_named_property(env, obj, "disks", arr) == napi_ok;
}

static napi_value result_of(napi_env env, const struct bb_result *r, uint64_t allocated) {
  napi_value obj, samples;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  if (napi_create_object(env, &obj) != napi_ok || !bulk_set_num(env, obj, "inodes", r->inodes) || !bulk_set_num(env, obj, "dirs", r->dirs) ||
      !bulk_set_num(env, obj, "entries", r->entries) || !bulk_set_bool(env, obj, "byteNames", r->byte_names) ||
      !bulk_set_bool(env, obj, "inlineData", r->inline_data) || !bulk_set_bool(env, obj, "dataChecksums", r->data_checksums) ||
      !bulk_set_bool(env, obj, "compressedExtents", r->compressed) || !bulk_set_num(env, obj, "bodyBytes", r->body_bytes) ||
      !bulk_set_num(env, obj, "tableBytes", r->table_bytes) || !bulk_set_num(env, obj, "searches", r->searches) ||
      !bulk_set_num(env, obj, "peakRssKiB", (uint64_t)ru.ru_maxrss) || !bulk_set_num(env, obj, "allocatedBytes", allocated) || (samples = bulk_samples(env, r->samplers, r->ndisks)) == NULL ||
      napi_set_named_property(env, obj, "samples", samples) != napi_ok || !set_disks(env, obj, r))
    return NULL;
  return obj;
}

napi_value btrfs_bulk_map(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct bb_job job = {0};
  struct bulk_js_progress progress;
  struct bb_segment *segs = NULL;
  uint64_t *skip = NULL;
  uint64_t tree_fd, root, carry, fd, inodes_fd, sector, node, csum_type, csum_size;
  napi_value out = NULL;
  napi_value o = argv[0];
  if (bulk_prop_uint(env, o, "treeFd", INT32_MAX, &tree_fd) && bulk_prop_uint(env, o, "root", SAFE, &root) && bulk_prop_uint(env, o, "carryMax", 1 << 20, &carry) &&
      bulk_prop_uint(env, o, "fd", INT32_MAX, &fd) && bulk_prop_uint(env, o, "inodesFd", INT32_MAX, &inodes_fd) &&
      bulk_prop_uint(env, o, "sectorSize", 65536, &sector) && bulk_prop_uint(env, o, "nodeSize", 65536, &node) &&
      bulk_prop_uint(env, o, "csumType", 255, &csum_type) && bulk_prop_uint(env, o, "csumSize", 64, &csum_size) &&
      parse_segments(env, o, &segs, &job.nsegments) && bulk_parse_skip(env, o, &skip, &job.nskip) &&
      bulk_parse_progress(env, o, &progress)) {
    job.progress = &progress.p;
    job.tree_fd = (int)tree_fd, job.root = root, job.carry_max = carry, job.fd = (int)fd, job.inodes_fd = (int)inodes_fd;
    job.sector_size = (uint32_t)sector, job.node_size = (uint32_t)node, job.csum_type = (uint32_t)csum_type, job.csum_size = (uint32_t)csum_size;
    job.segments = segs, job.skip = skip;
    struct bb_result r;
    bb_map(&job, &r);
    if (r.outcome == BB_OK) out = result_of(env, &r, progress.p.bytes);
    else bulk_throw_outcome(env, r.outcome == BB_REFUSED, r.why);
    bb_result_free(&r);
  }
  free(segs), free(skip);
  return out;
}
