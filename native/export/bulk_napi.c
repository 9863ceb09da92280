// See bulk_napi.h.
#include "bulk_napi.h"

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

void bulk_throw_outcome(napi_env env, bool refused, const char *why) {
  napi_value msg, code, err;
  const char *c = refused ? "ERR_BULK_REFUSED" : "ERR_BULK_FAILED";
  if (napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &msg) == napi_ok && napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code) == napi_ok &&
      napi_create_error(env, code, msg, &err) == napi_ok)
    napi_throw(env, err);
  else
    napi_throw_error(env, c, why);
}
