// What the addon's source files share: error helpers, argument parsing and the N-API call macros
// (defined in extfs_native.c), and the functions other files contribute to the module's exports.
#ifndef EXTFS_NATIVE_H
#define EXTFS_NATIVE_H

#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>

// Evaluate an N-API call; on failure make sure an exception is pending and return NULL to JS.
#define CHECK(call)                               \
  do {                                            \
    if ((call) != napi_ok) return napi_fail(env); \
  } while (0)

// Fetch exactly `n` arguments (missing ones are `undefined` and fail their type checks).
#define ARGS(n)                                                   \
  size_t argc = (n);                                              \
  napi_value argv[(n) > 0 ? (n) : 1];                             \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

// Throw an Error with `code`, `errno` and `syscall` set; returns NULL for `return throw_errno(...)`.
napi_value throw_errno(napi_env env, const char *what, int err);
// An N-API call failed: rethrow its pending exception or make one; returns NULL.
napi_value napi_fail(napi_env env);
// A file descriptor argument (TypeError / RangeError thrown on failure).
bool get_fd(napi_env env, napi_value v, int *fd);
// A non-negative integer argument at most `max` (TypeError / RangeError thrown on failure).
bool get_uint(napi_env env, napi_value v, const char *name, double max, uint64_t *out);
// A u64 as a JS number; RangeError above 2^53 rather than rounding.
bool make_u64(napi_env env, uint64_t v, const char *what, napi_value *out);

// native/btrfs.c
napi_value btrfs_chunks(napi_env env, napi_callback_info info);
napi_value btrfs_devices(napi_env env, napi_callback_info info);
napi_value btrfs_csum_info(napi_env env, napi_callback_info info);
napi_value btrfs_csums(napi_env env, napi_callback_info info);
napi_value btrfs_file_extents(napi_env env, napi_callback_info info);
napi_value csum_verify(napi_env env, napi_callback_info info);

// native/export/ext4_napi.c
napi_value ext4_bulk_map(napi_env env, napi_callback_info info);

// native/export/btrfs_bulk_napi.c
napi_value btrfs_bulk_map(napi_env env, napi_callback_info info);

// native/export/xfs_bulk_napi.c
napi_value xfs_bulk_map(napi_env env, napi_callback_info info);

#endif
