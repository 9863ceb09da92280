// The N-API helpers the bulk mappers' faces (ext4_napi.c, btrfs_bulk_napi.c) share: options read off
// one object, results set on one, the fingerprint samples, and a refusal or failure thrown.
#ifndef EXTFS_EXPORT_BULK_NAPI_H
#define EXTFS_EXPORT_BULK_NAPI_H

#include "../extfs_native.h"
#include "bulk.h"

#define BULK_SAFE_INTEGER 9007199254740991.0

bool bulk_prop_uint(napi_env env, napi_value obj, const char *key, double max, uint64_t *out);
// An array property (TypeError otherwise) and its length.
bool bulk_array_of(napi_env env, napi_value obj, const char *key, napi_value *arr, uint32_t *n);
// segments: [{ fsOffset, length, disk, diskOffset } | { fsOffset, length, hole: true }], a linear map
// (src/export/bulk-ext4.ts linearMap); calloc'd into *segs.
bool bulk_parse_segments(napi_env env, napi_value opts, struct bulk_segment **segs, size_t *n);
// device: a string property, malloc'd (NULL after throwing).
char *bulk_device_path(napi_env env, napi_value obj);
// skip: [inode number], calloc'd into *skip.
bool bulk_parse_skip(napi_env env, napi_value opts, uint64_t **skip, size_t *n);
bool bulk_set_num(napi_env env, napi_value obj, const char *key, uint64_t v);
bool bulk_set_bool(napi_env env, napi_value obj, const char *key, bool v);
// [{ disk, deviceOffset, length, csums? }] of every disk's sampler, in disk order; NULL on failure.
napi_value bulk_samples(napi_env env, const struct bulk_sampler *samplers, uint32_t ndisks);
// A refusal throws code ERR_BULK_REFUSED (export may fall back to the VFS walker); a failure
// ERR_BULK_FAILED (the walker would meet the same problem).
void bulk_throw_outcome(napi_env env, bool refused, const char *why);

// A bulk mapper's progress reported to options.onProgress(phase, done, bytes, total) (phase "dirs" or
// "inodes"; bulk.h struct bulk_progress), called synchronously on this thread, inside the N-API call
// that runs the mapper. Without the option only the bytes are counted.
struct bulk_js_progress {
  struct bulk_progress p;
  napi_env env;
  napi_value fn; // NULL: none, or it threw
};
// Reads options.onProgress (absent or undefined: none; anything else but a function: TypeError).
bool bulk_parse_progress(napi_env env, napi_value opts, struct bulk_js_progress *jp);

#endif
