// btrfs layout queries: the chunk tree (logical address ranges → stripes on member devices) and the
// member devices. FIEMAP on btrfs reports logical addresses; src/mapping/btrfs-chunks.ts turns them
// into device offsets with what these functions return. Both need CAP_SYS_ADMIN (tree search).
//
// On-disk items (the chunk item) are little-endian; the ioctl's own headers are in host order.
#include "extfs_native.h"

#include <endian.h>
#include <errno.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

// TREE_SEARCH_V2 result buffer: room for hundreds of chunk items per call (each 80 + 32·stripes
// bytes plus a 32-byte header), so even a multi-terabyte filesystem takes a handful of calls.
#define SEARCH_BUF (64u * 1024u)

static void uuid_string(const uint8_t u[16], char out[37]) {
  snprintf(out, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

static bool set_num(napi_env env, napi_value obj, const char *key, uint64_t v, const char *what) {
  napi_value js;
  return make_u64(env, v, what, &js) && napi_set_named_property(env, obj, key, js) == napi_ok;
}

static bool set_str(napi_env env, napi_value obj, const char *key, const char *s) {
  napi_value js;
  return napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &js) == napi_ok &&
         napi_set_named_property(env, obj, key, js) == napi_ok;
}

static bool set_uuid(napi_env env, napi_value obj, const char *key, const uint8_t u[16]) {
  char s[37];
  uuid_string(u, s);
  return set_str(env, obj, key, s);
}

// One chunk item (`item`, `len` bytes as stored) at logical address `logical` → a JS object.
// Returns false with an exception pending (a malformed item throws EIO: the kernel handed us junk).
static bool chunk_object(napi_env env, uint64_t logical, const uint8_t *item, uint32_t len, napi_value *out) {
  struct btrfs_chunk c;
  // The struct ends in one stripe; the item holds num_stripes of them.
  const size_t head = offsetof(struct btrfs_chunk, stripe);
  if (len < head) {
    throw_errno(env, "btrfs chunk item: truncated", EIO);
    return false;
  }
  memcpy(&c, item, head);
  uint16_t num_stripes = le16toh(c.num_stripes);
  if (num_stripes == 0 || len < head + (size_t)num_stripes * sizeof(struct btrfs_stripe)) {
    throw_errno(env, "btrfs chunk item: bad stripe count", EIO);
    return false;
  }
  napi_value obj, stripes, n;
  if (napi_create_object(env, &obj) != napi_ok ||
      !set_num(env, obj, "logical", logical, "btrfs chunk: logical address") ||
      !set_num(env, obj, "length", le64toh(c.length), "btrfs chunk: length") ||
      !set_num(env, obj, "type", le64toh(c.type), "btrfs chunk: type flags") ||
      !set_num(env, obj, "stripeLen", le64toh(c.stripe_len), "btrfs chunk: stripe length") ||
      napi_create_uint32(env, num_stripes, &n) != napi_ok || napi_set_named_property(env, obj, "numStripes", n) != napi_ok ||
      napi_create_uint32(env, le16toh(c.sub_stripes), &n) != napi_ok || napi_set_named_property(env, obj, "subStripes", n) != napi_ok ||
      napi_create_array_with_length(env, num_stripes, &stripes) != napi_ok)
    return false;
  for (uint16_t i = 0; i < num_stripes; i++) {
    struct btrfs_stripe s;
    memcpy(&s, item + head + (size_t)i * sizeof s, sizeof s);
    napi_value so;
    if (napi_create_object(env, &so) != napi_ok ||
        !set_num(env, so, "devid", le64toh(s.devid), "btrfs stripe: devid") ||
        !set_num(env, so, "offset", le64toh(s.offset), "btrfs stripe: physical offset") ||
        !set_uuid(env, so, "devUuid", s.dev_uuid) ||
        napi_set_element(env, stripes, i, so) != napi_ok)
      return false;
  }
  if (napi_set_named_property(env, obj, "stripes", stripes) != napi_ok) return false;
  *out = obj;
  return true;
}

// btrfsChunks(fd): every CHUNK_ITEM of the chunk tree, in logical order.
napi_value btrfs_chunks(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;

  struct btrfs_ioctl_search_args_v2 *args = calloc(1, sizeof *args + SEARCH_BUF);
  if (args == NULL) return throw_errno(env, "malloc", ENOMEM);

  napi_value result = NULL, array;
  uint32_t count = 0;
  struct btrfs_ioctl_search_key *k = &args->key;
  // Keys sort by (objectid, type, offset); every chunk item is (256, 228, logical address), so
  // pinning objectid and type makes min_offset the only cursor.
  k->tree_id = BTRFS_CHUNK_TREE_OBJECTID;
  k->min_objectid = k->max_objectid = BTRFS_FIRST_CHUNK_TREE_OBJECTID;
  k->min_type = k->max_type = BTRFS_CHUNK_ITEM_KEY;
  k->min_offset = 0;
  k->max_offset = UINT64_MAX;
  k->min_transid = 0;
  k->max_transid = UINT64_MAX;
  if (napi_create_array(env, &array) != napi_ok) goto out;
  for (;;) {
    k->nr_items = UINT32_MAX; // as many as fit; the kernel writes back how many it returned
    args->buf_size = SEARCH_BUF;
    if (ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, args) < 0) {
      throw_errno(env, "BTRFS_IOC_TREE_SEARCH_V2", errno);
      goto out;
    }
    if (k->nr_items == 0) break;
    size_t pos = 0;
    uint64_t last = 0;
    for (uint32_t i = 0; i < k->nr_items; i++) {
      struct btrfs_ioctl_search_header h;
      if (pos + sizeof h > SEARCH_BUF) break;
      memcpy(&h, (const uint8_t *)args->buf + pos, sizeof h); // host order, possibly unaligned
      pos += sizeof h;
      if (pos + h.len > SEARCH_BUF) {
        throw_errno(env, "BTRFS_IOC_TREE_SEARCH_V2: item past buffer", EIO);
        goto out;
      }
      if (h.objectid == BTRFS_FIRST_CHUNK_TREE_OBJECTID && h.type == BTRFS_CHUNK_ITEM_KEY) {
        napi_value obj;
        if (!chunk_object(env, h.offset, (const uint8_t *)args->buf + pos, h.len, &obj) ||
            napi_set_element(env, array, count++, obj) != napi_ok)
          goto out;
      }
      pos += h.len;
      last = h.offset;
    }
    // Resume after the last key seen; UINT64_MAX would wrap, and means we are done anyway.
    if (last == UINT64_MAX) break;
    k->min_offset = last + 1;
  }
  result = array;
out:
  free(args);
  return result != NULL ? result : napi_fail(env);
}

// btrfsDevices(fd): { fsid, devices: [{ devid, uuid, path, totalBytes }] } for the live members.
napi_value btrfs_devices(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;

  struct btrfs_ioctl_fs_info_args fs;
  memset(&fs, 0, sizeof fs);
  if (ioctl(fd, BTRFS_IOC_FS_INFO, &fs) < 0) return throw_errno(env, "BTRFS_IOC_FS_INFO", errno);

  napi_value result, devices;
  CHECK(napi_create_object(env, &result));
  if (!set_uuid(env, result, "fsid", fs.fsid)) return napi_fail(env);
  CHECK(napi_create_array(env, &devices));
  uint32_t count = 0;
  // Devids are 1..max_id with holes where devices were removed; DEV_INFO answers ENODEV for those.
  for (uint64_t devid = 1; devid <= fs.max_id; devid++) {
    struct btrfs_ioctl_dev_info_args d;
    memset(&d, 0, sizeof d); // a zero uuid means "match by devid only"
    d.devid = devid;
    if (ioctl(fd, BTRFS_IOC_DEV_INFO, &d) < 0) {
      if (errno == ENODEV) continue;
      return throw_errno(env, "BTRFS_IOC_DEV_INFO", errno);
    }
    d.path[sizeof d.path - 1] = 0; // the kernel NUL-terminates; do not rely on it
    napi_value obj;
    CHECK(napi_create_object(env, &obj));
    if (!set_num(env, obj, "devid", d.devid, "btrfs device: devid") ||
        !set_uuid(env, obj, "uuid", d.uuid) ||
        !set_str(env, obj, "path", (const char *)d.path) ||
        !set_num(env, obj, "totalBytes", d.total_bytes, "btrfs device: total bytes"))
      return napi_fail(env);
    CHECK(napi_set_element(env, devices, count++, obj));
  }
  CHECK(napi_set_named_property(env, result, "devices", devices));
  return result;
}
