// btrfsBulkMap(options): the N-API face of the btrfs bulk mapper (btrfs_bulk.c). The contract is
// documented in src/linux/index.ts. Synchronous: export has nothing else to do meanwhile, and the
// snapshot it reads cannot change.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../extfs_native.h"
#include "btrfs_bulk.h"

#define SAFE 9007199254740991.0

static bool prop_uint(napi_env env, napi_value obj, const char *key, double max, uint64_t *out) {
  napi_value v;
  return napi_get_named_property(env, obj, key, &v) == napi_ok && get_uint(env, v, key, max, out);
}

static bool array_of(napi_env env, napi_value obj, const char *key, napi_value *arr, uint32_t *n) {
  bool is;
  if (napi_get_named_property(env, obj, key, arr) != napi_ok || napi_is_array(env, *arr, &is) != napi_ok || !is) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", key);
    return false;
  }
  return napi_get_array_length(env, *arr, n) == napi_ok;
}

// segments: [{ logical, length, copies: [{ disk, offset }] }], copies[0] the one read.
static bool parse_segment(napi_env env, napi_value el, struct bb_segment *s) {
  napi_value copies, c;
  uint32_t n;
  if (!prop_uint(env, el, "logical", SAFE, &s->logical) || !prop_uint(env, el, "length", SAFE, &s->length) || !array_of(env, el, "copies", &copies, &n))
    return false;
  if (n < 1 || n > BB_MAX_COPIES) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "a segment has 1 to 4 copies");
    return false;
  }
  s->ncopies = n;
  for (uint32_t k = 0; k < n; k++) {
    uint64_t disk;
    if (napi_get_element(env, copies, k, &c) != napi_ok || !prop_uint(env, c, "disk", BB_MAX_DISKS - 1, &disk) ||
        !prop_uint(env, c, "offset", SAFE, &s->copy[k].offset))
      return false;
    s->copy[k].disk = (uint32_t)disk;
  }
  return true;
}

static bool parse_segments(napi_env env, napi_value opts, struct bb_segment **segs, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!array_of(env, opts, "segments", &arr, &count)) return false;
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

static bool parse_skip(napi_env env, napi_value opts, uint64_t **skip, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!array_of(env, opts, "skip", &arr, &count)) return false;
  *skip = calloc(count ? count : 1, sizeof **skip);
  if (*skip == NULL) return throw_errno(env, "malloc", ENOMEM), false;
  *n = count;
  for (uint32_t k = 0; k < count; k++)
    if (napi_get_element(env, arr, k, &el) != napi_ok || !get_uint(env, el, "skip", SAFE, &(*skip)[k])) return false;
  return true;
}

static bool set_num(napi_env env, napi_value obj, const char *key, uint64_t v) {
  napi_value js;
  return make_u64(env, v, key, &js) && napi_set_named_property(env, obj, key, js) == napi_ok;
}

static bool set_bool(napi_env env, napi_value obj, const char *key, bool v) {
  napi_value js;
  return napi_get_boolean(env, v, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

// A checksummed sample's checksums, as a Buffer `csums`.
static bool set_csums(napi_env env, napi_value obj, const struct bb_sample *s) {
  napi_value buf;
  void *data;
  if (s->csum_len == 0) return true;
  if (napi_create_buffer_copy(env, s->csum_len, s->csum, &data, &buf) != napi_ok) return false;
  return napi_set_named_property(env, obj, "csums", buf) == napi_ok;
}

static napi_value samples_of(napi_env env, const struct bb_result *r) {
  napi_value arr, el;
  uint32_t at = 0;
  if (napi_create_array(env, &arr) != napi_ok) return NULL;
  for (uint32_t d = 0; d < r->ndisks; d++) {
    for (uint32_t k = 0; k < r->samplers[d].n; k++) {
      const struct bb_sample *s = &r->samplers[d].kept[k];
      if (napi_create_object(env, &el) != napi_ok || !set_num(env, el, "disk", s->disk) || !set_num(env, el, "deviceOffset", s->offset) ||
          !set_num(env, el, "length", s->length) || !set_csums(env, el, s) || napi_set_element(env, arr, at++, el) != napi_ok)
        return NULL;
    }
  }
  return arr;
}

static napi_value result_of(napi_env env, const struct bb_result *r) {
  napi_value obj, samples;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  if (napi_create_object(env, &obj) != napi_ok || !set_num(env, obj, "inodes", r->inodes) || !set_num(env, obj, "dirs", r->dirs) ||
      !set_num(env, obj, "entries", r->entries) || !set_bool(env, obj, "byteNames", r->byte_names) ||
      !set_bool(env, obj, "inlineData", r->inline_data) || !set_bool(env, obj, "dataChecksums", r->data_checksums) ||
      !set_bool(env, obj, "compressedExtents", r->compressed) || !set_num(env, obj, "bodyBytes", r->body_bytes) ||
      !set_num(env, obj, "tableBytes", r->table_bytes) || !set_num(env, obj, "searches", r->searches) ||
      !set_num(env, obj, "peakRssKiB", (uint64_t)ru.ru_maxrss) || (samples = samples_of(env, r)) == NULL ||
      napi_set_named_property(env, obj, "samples", samples) != napi_ok)
    return NULL;
  return obj;
}

// A refusal throws code ERR_BULK_REFUSED (export may fall back to the VFS walker); a failure
// ERR_BULK_FAILED (export fails: the walker would meet the same problem). As ext4BulkMap.
static void throw_outcome(napi_env env, const struct bb_result *r) {
  napi_value msg, code, err;
  const char *c = r->outcome == BB_REFUSED ? "ERR_BULK_REFUSED" : "ERR_BULK_FAILED";
  if (napi_create_string_utf8(env, r->why, NAPI_AUTO_LENGTH, &msg) == napi_ok && napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code) == napi_ok &&
      napi_create_error(env, code, msg, &err) == napi_ok)
    napi_throw(env, err);
  else
    napi_throw_error(env, c, r->why);
}

napi_value btrfs_bulk_map(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct bb_job job = {0};
  struct bb_segment *segs = NULL;
  uint64_t *skip = NULL;
  uint64_t tree_fd, root, carry, fd, inodes_fd, sector, node, csum_type, csum_size;
  napi_value out = NULL;
  napi_value o = argv[0];
  if (prop_uint(env, o, "treeFd", INT32_MAX, &tree_fd) && prop_uint(env, o, "root", SAFE, &root) && prop_uint(env, o, "carryMax", 1 << 20, &carry) &&
      prop_uint(env, o, "fd", INT32_MAX, &fd) && prop_uint(env, o, "inodesFd", INT32_MAX, &inodes_fd) &&
      prop_uint(env, o, "sectorSize", 65536, &sector) && prop_uint(env, o, "nodeSize", 65536, &node) &&
      prop_uint(env, o, "csumType", 255, &csum_type) && prop_uint(env, o, "csumSize", 64, &csum_size) &&
      parse_segments(env, o, &segs, &job.nsegments) && parse_skip(env, o, &skip, &job.nskip)) {
    job.tree_fd = (int)tree_fd, job.root = root, job.carry_max = carry, job.fd = (int)fd, job.inodes_fd = (int)inodes_fd;
    job.sector_size = (uint32_t)sector, job.node_size = (uint32_t)node, job.csum_type = (uint32_t)csum_type, job.csum_size = (uint32_t)csum_size;
    job.segments = segs, job.skip = skip;
    struct bb_result r;
    bb_map(&job, &r);
    if (r.outcome == BB_OK) out = result_of(env, &r);
    else throw_outcome(env, &r);
    bb_result_free(&r);
  }
  free(segs), free(skip);
  return out;
}
