// The Linux calls Node lacks: FIEMAP, filesystem freeze/thaw, block device ioctls, l*xattr and
// O_DIRECT reads at unaligned offsets. Plain N-API (no node-addon-api); everything is synchronous.
// The JS-facing contract is documented in src/linux/index.ts.
//
// Numbers cross the boundary as JS doubles, so every 64-bit value is checked against 2^53 rather
// than silently rounded. Syscall failures throw an Error with `code` ('EBUSY') and `errno` (16).
#include "extfs_native.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MAX_SAFE (9007199254740991.0) // Number.MAX_SAFE_INTEGER, 2^53 - 1
#define ALIGN 4096u                   // O_DIRECT alignment; a multiple of every logical block size
#define MAX_CHUNK (1u << 20)          // bytes per pread(2), so the bounce buffer stays at 1 MiB
#define FIEMAP_BATCH 256              // extents per FS_IOC_FIEMAP call

// ---------------------------------------------------------------------------------- errors

static const struct { int no; const char *name; } errno_names[] = {
  {EPERM, "EPERM"},   {ENOENT, "ENOENT"},   {EINTR, "EINTR"},     {EIO, "EIO"},
  {ENXIO, "ENXIO"},   {E2BIG, "E2BIG"},     {EBADF, "EBADF"},     {EAGAIN, "EAGAIN"},
  {ENOMEM, "ENOMEM"}, {EACCES, "EACCES"},   {EFAULT, "EFAULT"},   {EBUSY, "EBUSY"},
  {EEXIST, "EEXIST"}, {ENODEV, "ENODEV"},   {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"},
  {EINVAL, "EINVAL"}, {ENOTTY, "ENOTTY"},   {EFBIG, "EFBIG"},     {ENOSPC, "ENOSPC"},
  {EROFS, "EROFS"},   {ERANGE, "ERANGE"},   {ENAMETOOLONG, "ENAMETOOLONG"},
  {ENOSYS, "ENOSYS"}, {ELOOP, "ELOOP"},     {ENODATA, "ENODATA"}, {EOVERFLOW, "EOVERFLOW"},
  {EOPNOTSUPP, "EOPNOTSUPP"},               {ESTALE, "ESTALE"},
  {EXDEV, "EXDEV"},
};

// Throw `Error("<what>: <strerror>")` with `code`, `errno` and `syscall` set, like Node's fs errors.
// Returns NULL so callers can `return throw_errno(...)`.
napi_value throw_errno(napi_env env, const char *what, int err) {
  char code[16];
  const char *name = NULL;
  for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
    if (errno_names[i].no == err) name = errno_names[i].name;
  if (name == NULL) snprintf(code, sizeof code, "E%d", err);
  else snprintf(code, sizeof code, "%s", name);

  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));

  napi_value js_msg, js_code, js_errno, js_what, error;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &js_msg) != napi_ok ||
      napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code) != napi_ok ||
      napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &js_what) != napi_ok ||
      napi_create_int32(env, err, &js_errno) != napi_ok ||
      napi_create_error(env, js_code, js_msg, &error) != napi_ok ||
      napi_set_named_property(env, error, "errno", js_errno) != napi_ok ||
      napi_set_named_property(env, error, "syscall", js_what) != napi_ok) {
    napi_throw_error(env, code, msg); // degraded, but still an error with the right code
    return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

// An N-API call itself failed: rethrow its pending exception, or make one from its error info.
napi_value napi_fail(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) {
    const napi_extended_error_info *info = NULL;
    napi_get_last_error_info(env, &info);
    napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
  }
  return NULL;
}

// ------------------------------------------------------------------------ argument parsing

// A non-negative integer no larger than `max`: TypeError if not a number, RangeError otherwise.
bool get_uint(napi_env env, napi_value v, const char *name, double max, uint64_t *out) {
  napi_valuetype type;
  double d;
  char msg[128];
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_number) {
    snprintf(msg, sizeof msg, "%s must be a number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= max && d == (double)(uint64_t)d)) { // also rejects NaN and fractions
    snprintf(msg, sizeof msg, "%s must be an integer from 0 to %.0f", name, max);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

bool get_fd(napi_env env, napi_value v, int *fd) {
  uint64_t u;
  if (!get_uint(env, v, "fd", INT32_MAX, &u)) return false;
  *fd = (int)u;
  return true;
}

// A JS string as a malloc'd C string (caller frees). Embedded NULs would silently shorten a path,
// so they are refused, as Node's fs does.
// A path or name argument as a malloc'd C string (caller frees): a JS string (UTF-8) or a Buffer,
// which carries names that are not UTF-8 (Linux names are bytes). NUL inside is refused either way.
static char *get_cstring(napi_env env, napi_value v, const char *name) {
  size_t len, got;
  char msg[128];
  bool is_buffer = false;
  void *data = NULL;
  napi_is_buffer(env, v, &is_buffer);
  if (is_buffer) {
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) return (char *)napi_fail(env);
  } else if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a string or a Buffer", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  char *s = malloc(len + 1);
  if (s == NULL) return (char *)throw_errno(env, "malloc", ENOMEM);
  if (is_buffer) {
    memcpy(s, data, len);
    s[len] = '\0';
    got = len;
  } else {
    napi_get_value_string_utf8(env, v, s, len + 1, &got);
  }
  if (strlen(s) != got) {
    free(s);
    snprintf(msg, sizeof msg, "%s must not contain NUL bytes", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", msg);
    return NULL;
  }
  return s;
}

// A u64 from the kernel as a JS number; RangeError rather than losing precision above 2^53.
bool make_u64(napi_env env, uint64_t v, const char *what, napi_value *out) {
  if (v > (1ull << 53)) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s %llu exceeds 2^53", what, (unsigned long long)v);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return false;
  }
  return napi_create_double(env, (double)v, out) == napi_ok;
}

// -------------------------------------------------------------------------------- FIEMAP

static bool set_u64(napi_env env, napi_value obj, const char *key, uint64_t v, const char *what) {
  napi_value js;
  return make_u64(env, v, what, &js) && napi_set_named_property(env, obj, key, js) == napi_ok;
}

static napi_value fiemap(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;

  // Zeroed once: the reserved fields must be zero on input, and the kernel only writes extents.
  struct fiemap *fm = calloc(1, sizeof *fm + FIEMAP_BATCH * sizeof(struct fiemap_extent));
  if (fm == NULL) return throw_errno(env, "malloc", ENOMEM);

  napi_value result = NULL, array;
  uint32_t count = 0;
  uint64_t start = 0;
  if (napi_create_array(env, &array) != napi_ok) goto out;
  for (;;) {
    fm->fm_start = start;
    fm->fm_length = FIEMAP_MAX_OFFSET - start;
    fm->fm_flags = FIEMAP_FLAG_SYNC; // flush dirty pages so no extent is still DELALLOC
    fm->fm_extent_count = FIEMAP_BATCH;
    fm->fm_mapped_extents = 0;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) {
      throw_errno(env, "FS_IOC_FIEMAP", errno);
      goto out;
    }
    if (fm->fm_mapped_extents == 0) break; // empty file, or nothing past the last batch

    const struct fiemap_extent *last = &fm->fm_extents[fm->fm_mapped_extents - 1];
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
      const struct fiemap_extent *e = &fm->fm_extents[i];
      napi_value obj, flags;
      if (napi_create_object(env, &obj) != napi_ok ||
          !set_u64(env, obj, "logical", e->fe_logical, "fiemap: logical offset") ||
          !set_u64(env, obj, "physical", e->fe_physical, "fiemap: physical offset") ||
          !set_u64(env, obj, "length", e->fe_length, "fiemap: extent length") ||
          napi_create_uint32(env, e->fe_flags, &flags) != napi_ok ||
          napi_set_named_property(env, obj, "flags", flags) != napi_ok ||
          napi_set_element(env, array, count++, obj) != napi_ok)
        goto out;
    }
    // Continue after the last extent; stop if the kernel says it was the last, or (defensively)
    // if it would not move us forward, so a misbehaving filesystem cannot loop us forever.
    uint64_t next = last->fe_logical + last->fe_length;
    if ((last->fe_flags & FIEMAP_EXTENT_LAST) || next <= start) break;
    start = next;
  }
  result = array;
out:
  free(fm);
  return result != NULL ? result : napi_fail(env);
}

// ---------------------------------------------------------------- freeze, block devices

static napi_value simple_ioctl(napi_env env, napi_callback_info info, unsigned long req, const char *what) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, req, 0) < 0) return throw_errno(env, what, errno);
  return NULL; // undefined
}

static napi_value freeze(napi_env env, napi_callback_info info) {
  return simple_ioctl(env, info, FIFREEZE, "FIFREEZE");
}

static napi_value thaw(napi_env env, napi_callback_info info) {
  return simple_ioctl(env, info, FITHAW, "FITHAW");
}

// FS_IOC_GETFLAGS: the file attribute flags chattr sets (FS_IMMUTABLE_FL, FS_APPEND_FL, FS_NODUMP_FL...).
// The kernel reads and writes an int, whatever the ioctl number's `long` says.
static napi_value attr_flags(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd, flags = 0;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0) return throw_errno(env, "FS_IOC_GETFLAGS", errno);
  napi_value out;
  CHECK(napi_create_uint32(env, (uint32_t)flags, &out));
  return out;
}

// FICLONE: make `dest` share all of `src`'s blocks (XFS reflink, btrfs). The kernel flushes `src`'s
// dirty pages first and holds both inodes locked, so the clone is a consistent image of the file.
static napi_value ficlone(napi_env env, napi_callback_info info) {
  ARGS(2);
  int src, dest;
  if (!get_fd(env, argv[0], &src) || !get_fd(env, argv[1], &dest)) return NULL;
  if (ioctl(dest, FICLONE, src) < 0) return throw_errno(env, "FICLONE", errno);
  return NULL; // undefined
}

static napi_value block_device_size(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  uint64_t size;
  napi_value out;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) return throw_errno(env, "BLKGETSIZE64", errno);
  return make_u64(env, size, "BLKGETSIZE64: size", &out) ? out : napi_fail(env);
}

static napi_value logical_block_size(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd, size;
  napi_value out;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (ioctl(fd, BLKSSZGET, &size) < 0) return throw_errno(env, "BLKSSZGET", errno);
  CHECK(napi_create_int32(env, size, &out));
  return out;
}

// ------------------------------------------------------------------------------- xattrs

// One call into a buffer of the VFS's largest list or value (XATTR_LIST_MAX, XATTR_SIZE_MAX: 64 KiB),
// instead of probing the size first: the walker lists every file's xattrs, most have none. Should
// a filesystem answer ERANGE anyway, probe the size, then read, going round again if it grew.
// Returns a malloc'd buffer (caller frees) and its length, or NULL with an exception thrown.
#define XATTR_VFS_MAX 65536
static char *read_xattr(napi_env env, const char *path, const char *name, ssize_t *len) {
  const char *what = name == NULL ? "llistxattr" : "lgetxattr";
  ssize_t size = XATTR_VFS_MAX;
  for (;;) {
    char *buf = malloc(size + 1); // + 1: malloc(0) may return NULL
    if (buf == NULL) return (char *)throw_errno(env, "malloc", ENOMEM);
    *len = name == NULL ? llistxattr(path, buf, size) : lgetxattr(path, name, buf, size);
    if (*len >= 0) return buf;
    int err = errno;
    free(buf);
    if (err != ERANGE) return (char *)throw_errno(env, what, err);
    size = name == NULL ? llistxattr(path, NULL, 0) : lgetxattr(path, name, NULL, 0);
    if (size < 0) return (char *)throw_errno(env, what, errno);
  }
}

static napi_value list_xattrs(napi_env env, napi_callback_info info) {
  ARGS(1);
  char *path = get_cstring(env, argv[0], "path");
  if (path == NULL) return NULL;
  ssize_t len = 0;
  char *names = read_xattr(env, path, NULL, &len);
  free(path);
  if (names == NULL) return NULL;

  // The kernel returns the names NUL-terminated, back to back: "user.a\0user.b\0". Each becomes a
  // Buffer: a name is bytes, and decoding it as UTF-8 here would lose the ones that are not.
  napi_value array = NULL, s;
  uint32_t count = 0;
  if (napi_create_array(env, &array) == napi_ok) {
    for (ssize_t at = 0; at < len; at += strlen(names + at) + 1) {
      if (napi_create_buffer_copy(env, strnlen(names + at, len - at), names + at, NULL, &s) != napi_ok ||
          napi_set_element(env, array, count++, s) != napi_ok) {
        array = NULL;
        break;
      }
    }
  }
  free(names);
  return array != NULL ? array : napi_fail(env);
}

static napi_value get_xattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  char *path = get_cstring(env, argv[0], "path");
  if (path == NULL) return NULL;
  char *name = get_cstring(env, argv[1], "name");
  if (name == NULL) {
    free(path);
    return NULL;
  }
  ssize_t len = 0;
  char *value = read_xattr(env, path, name, &len);
  free(path);
  free(name);
  if (value == NULL) return NULL;
  napi_value buffer = NULL;
  napi_status status = napi_create_buffer_copy(env, len, value, NULL, &buffer);
  free(value);
  return status == napi_ok ? buffer : napi_fail(env);
}

// ------------------------------------------------------------------------ O_DIRECT reads

// One aligned bounce buffer per JS environment (main thread or worker), grown up to MAX_CHUNK
// and freed when the environment goes away. Per environment, so workers never share one.
typedef struct {
  void *buf;
  size_t size;
} bounce_t;

static void bounce_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(((bounce_t *)data)->buf);
  free(data);
}

static napi_value pread_direct(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  bool is_buffer = false;
  uint8_t *target;
  size_t target_len;
  uint64_t target_offset, length, position;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  CHECK(napi_is_buffer(env, argv[1], &is_buffer));
  if (!is_buffer) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "target must be a Buffer");
    return NULL;
  }
  CHECK(napi_get_buffer_info(env, argv[1], (void **)&target, &target_len));
  if (!get_uint(env, argv[2], "targetOffset", MAX_SAFE, &target_offset) ||
      !get_uint(env, argv[3], "length", MAX_SAFE, &length) ||
      !get_uint(env, argv[4], "position", MAX_SAFE, &position))
    return NULL;
  if (target_offset > target_len || length > target_len - target_offset) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "targetOffset + length exceeds the target Buffer");
    return NULL;
  }

  bounce_t *bounce;
  CHECK(napi_get_instance_data(env, (void **)&bounce));

  // Example: position 5000, length 200 reads [4096, 8192) and copies bounce[904..1104).
  // Both ends are below 2^54, so the arithmetic cannot overflow.
  uint64_t want_end = position + length;
  uint64_t off = position & ~(uint64_t)(ALIGN - 1);
  uint64_t end = (want_end + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
  uint64_t copied = 0;
  while (off < end) {
    size_t chunk = end - off < MAX_CHUNK ? (size_t)(end - off) : MAX_CHUNK;
    if (bounce->size < chunk) {
      void *grown;
      int err = posix_memalign(&grown, ALIGN, chunk);
      if (err != 0) return throw_errno(env, "posix_memalign", err);
      free(bounce->buf);
      bounce->buf = grown;
      bounce->size = chunk;
    }
    // Fill the chunk. A block device only reads short at its end (then pread returns 0 next);
    // keep going after a short read anyway, in logical blocks, in case the kernel split it.
    size_t got = 0;
    while (got < chunk) {
      ssize_t n = pread(fd, (uint8_t *)bounce->buf + got, chunk - got, (off_t)(off + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return throw_errno(env, "pread", errno);
      if (n == 0) break;
      got += (size_t)n;
    }
    // Copy the overlap of [off, off + got) with [position, want_end) into the target.
    uint64_t from = off > position ? off : position;
    uint64_t to = off + got < want_end ? off + got : want_end;
    if (to > from) {
      memcpy(target + target_offset + (from - position), (uint8_t *)bounce->buf + (from - off), to - from);
      copied = to - position;
    }
    if (got < chunk) break; // end of device
    off += chunk;
  }

  napi_value out;
  CHECK(napi_create_double(env, (double)copied, &out));
  return out;
}

// ------------------------------------------------------------------------------- memory

// mallocTrim(): glibc's malloc_trim(0), which gives the free pages of every malloc arena back to the
// kernel (freed memory otherwise stays in the process for reuse). Node offers no way to ask for it;
// serve asks after a burst of connections ends (src/service/reclaim.ts). true when pages went back.
static napi_value malloc_trim_js(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  if (napi_get_boolean(env, malloc_trim(0) == 1, &out) != napi_ok) return napi_fail(env);
  return out;
}

// ------------------------------------------------------------------------------- module

static napi_value init(napi_env env, napi_value exports) {
  bounce_t *bounce = calloc(1, sizeof *bounce);
  if (bounce == NULL) return throw_errno(env, "malloc", ENOMEM);
  if (napi_set_instance_data(env, bounce, bounce_free, NULL) != napi_ok) {
    free(bounce);
    return napi_fail(env);
  }

  const napi_property_descriptor props[] = {
    {"fiemap", NULL, fiemap, NULL, NULL, NULL, napi_enumerable, NULL},
    {"freeze", NULL, freeze, NULL, NULL, NULL, napi_enumerable, NULL},
    {"thaw", NULL, thaw, NULL, NULL, NULL, napi_enumerable, NULL},
    {"attrFlags", NULL, attr_flags, NULL, NULL, NULL, napi_enumerable, NULL},
    {"ficlone", NULL, ficlone, NULL, NULL, NULL, napi_enumerable, NULL},
    {"blockDeviceSize", NULL, block_device_size, NULL, NULL, NULL, napi_enumerable, NULL},
    {"logicalBlockSize", NULL, logical_block_size, NULL, NULL, NULL, napi_enumerable, NULL},
    {"listXattrs", NULL, list_xattrs, NULL, NULL, NULL, napi_enumerable, NULL},
    {"getXattr", NULL, get_xattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"preadDirect", NULL, pread_direct, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsChunks", NULL, btrfs_chunks, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsDevices", NULL, btrfs_devices, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsCsumInfo", NULL, btrfs_csum_info, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsCsums", NULL, btrfs_csums, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsFileExtents", NULL, btrfs_file_extents, NULL, NULL, NULL, napi_enumerable, NULL},
    {"csumVerify", NULL, csum_verify, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mallocTrim", NULL, malloc_trim_js, NULL, NULL, NULL, napi_enumerable, NULL},
    {"ext4BulkMap", NULL, ext4_bulk_map, NULL, NULL, NULL, napi_enumerable, NULL},
    {"btrfsBulkMap", NULL, btrfs_bulk_map, NULL, NULL, NULL, napi_enumerable, NULL},
    {"xfsBulkMap", NULL, xfs_bulk_map, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
