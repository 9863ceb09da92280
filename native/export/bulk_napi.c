// See bulk_napi.h.
#include "bulk_napi.h"
#include "../js_progress.h"

#include <errno.h>
#include <stdlib.h>

bool bulk_prop_uint(napi_env env, napi_value obj, const char *key, double max, uint64_t *out) {
  napi_value v;
  return napi_get_named_property(env, obj, key, &v) == napi_ok && get_uint(env, v, key, max, out);
}

bool bulk_array_of(napi_env env, napi_value obj, const char *key, napi_value *arr, uint32_t *n) {
  bool is;
  if (napi_get_named_property(env, obj, key, arr) != napi_ok || napi_is_array(env, *arr, &is) != napi_ok || !is) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", key);
    return false;
  }
  return napi_get_array_length(env, *arr, n) == napi_ok;
}

static bool prop(napi_env env, napi_value obj, const char *key, napi_value *out) {
  return napi_get_named_property(env, obj, key, out) == napi_ok;
}

bool bulk_parse_segments(napi_env env, napi_value opts, struct bulk_segment **segs, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!bulk_array_of(env, opts, "segments", &arr, &count)) return false;
  if (count > BULK_MAX_SEGMENTS) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "too many segments");
    return false;
  }
  *segs = calloc(count ? count : 1, sizeof **segs);
  if (*segs == NULL) return throw_errno(env, "malloc", ENOMEM), false;
  *n = count;
  for (uint32_t k = 0; k < count; k++) {
    uint64_t disk = 0;
    struct bulk_segment *s = &(*segs)[k];
    napi_value hole;
    napi_valuetype type;
    if (napi_get_element(env, arr, k, &el) != napi_ok || !prop(env, el, "hole", &hole) || napi_typeof(env, hole, &type) != napi_ok) return false;
    s->hole = false;
    if (type == napi_boolean && napi_get_value_bool(env, hole, &s->hole) != napi_ok) return false;
    if (!bulk_prop_uint(env, el, "fsOffset", 9007199254740991.0, &s->fs_offset) || !bulk_prop_uint(env, el, "length", 9007199254740991.0, &s->length) ||
        (!s->hole && (!bulk_prop_uint(env, el, "disk", BULK_MAX_DISKS - 1, &disk) || !bulk_prop_uint(env, el, "diskOffset", 9007199254740991.0, &s->disk_offset))))
      return false;
    s->disk = (uint32_t)disk;
  }
  return true;
}

char *bulk_device_path(napi_env env, napi_value obj) {
  napi_value v;
  size_t len;
  if (!prop(env, obj, "device", &v) || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "device must be a string");
    return NULL;
  }
  char *s = malloc(len + 1);
  if (s == NULL) return throw_errno(env, "malloc", ENOMEM), NULL;
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

bool bulk_parse_skip(napi_env env, napi_value opts, uint64_t **skip, size_t *n) {
  napi_value arr, el;
  uint32_t count;
  if (!bulk_array_of(env, opts, "skip", &arr, &count)) return false;
  *skip = calloc(count ? count : 1, sizeof **skip);
  if (*skip == NULL) return throw_errno(env, "malloc", ENOMEM), false;
  *n = count;
  for (uint32_t k = 0; k < count; k++)
    if (napi_get_element(env, arr, k, &el) != napi_ok || !get_uint(env, el, "skip", BULK_SAFE_INTEGER, &(*skip)[k])) return false;
  return true;
}

bool bulk_set_num(napi_env env, napi_value obj, const char *key, uint64_t v) {
  napi_value js;
  return make_u64(env, v, key, &js) && napi_set_named_property(env, obj, key, js) == napi_ok;
}

bool bulk_set_bool(napi_env env, napi_value obj, const char *key, bool v) {
  napi_value js;
  return napi_get_boolean(env, v, &js) == napi_ok && napi_set_named_property(env, obj, key, js) == napi_ok;
}

// A checksummed sample's checksums, as a Buffer `csums`.
static bool set_csums(napi_env env, napi_value obj, const struct bulk_sample *s) {
  napi_value buf;
  void *data;
  if (s->csum_len == 0) return true;
  return napi_create_buffer_copy(env, s->csum_len, s->csum, &data, &buf) == napi_ok && napi_set_named_property(env, obj, "csums", buf) == napi_ok;
}

napi_value bulk_samples(napi_env env, const struct bulk_sampler *samplers, uint32_t ndisks) {
  napi_value arr, el;
  uint32_t at = 0;
  if (napi_create_array(env, &arr) != napi_ok) return NULL;
  for (uint32_t d = 0; d < ndisks; d++) {
    for (uint32_t k = 0; k < samplers[d].n; k++) {
      const struct bulk_sample *s = &samplers[d].kept[k];
      if (napi_create_object(env, &el) != napi_ok || !bulk_set_num(env, el, "disk", s->disk) || !bulk_set_num(env, el, "deviceOffset", s->offset) ||
          !bulk_set_num(env, el, "length", s->length) || !set_csums(env, el, s) || napi_set_element(env, arr, at++, el) != napi_ok)
        return NULL;
    }
  }
  return arr;
}

static void js_report(void *ctx, enum bulk_phase phase, uint64_t done, uint64_t bytes, uint64_t total) {
  struct bulk_js_progress *jp = ctx;
  const double values[] = {(double)done, (double)bytes, (double)total};
  js_progress_call(jp->env, &jp->fn, phase == BULK_PHASE_DIRS ? "dirs" : "inodes", values, 3);
}

bool bulk_parse_progress(napi_env env, napi_value opts, struct bulk_js_progress *jp) {
  napi_value fn;
  napi_valuetype type;
  *jp = (struct bulk_js_progress){.env = env};
  if (!prop(env, opts, "onProgress", &fn) || napi_typeof(env, fn, &type) != napi_ok) return false;
  if (type == napi_undefined) return true;
  if (type != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "onProgress must be a function");
    return false;
  }
  jp->fn = fn;
  jp->p.report = js_report;
  jp->p.ctx = jp;
  return true;
}

void bulk_throw_outcome(napi_env env, bool refused, const char *why) {
  napi_value msg, code, err;
  const char *c = refused ? "ERR_BULK_REFUSED" : "ERR_BULK_FAILED";
  if (napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &msg) == napi_ok && napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code) == napi_ok &&
      napi_create_error(env, code, msg, &err) == napi_ok)
    napi_throw(env, err);
  else
    napi_throw_error(env, c, why);
}
