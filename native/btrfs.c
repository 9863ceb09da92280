// btrfs layout queries: the chunk tree (logical address ranges → stripes on member devices), the
// member devices, the data checksums of a logical range (the csum tree), and a file's extent items
// (its subvolume's tree: how each compressed extent is stored). FIEMAP on btrfs reports logical addresses; src/mapping/btrfs-chunks.ts turns them
// into device offsets with what these functions return. Both need CAP_SYS_ADMIN (tree search).
//
// On-disk items (the chunk item) are little-endian; the ioctl's own headers are in host order.
#include "extfs_native.h"
#include "csum.h"
#include "btrfs.h"

#include <endian.h>
#include <errno.h>
#include <linux/btrfs.h>
#include <linux/btrfs_tree.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

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

// Receives one item of a tree search; false stops the search (with a JS error thrown).
typedef bool (*item_fn)(napi_env env, const struct btrfs_ioctl_search_header *h, const uint8_t *item, void *ctx);

// Every item with the key's objectid and type (both pinned by the caller, so that the key offset is
// the only cursor) in [min_offset, max_offset] of args->key's tree, in key order, to `each`. The one
// loop over BTRFS_IOC_TREE_SEARCH_V2 results: chunk items and checksum items are both read through it.
static bool search_items(napi_env env, int fd, struct btrfs_ioctl_search_args_v2 *args, uint64_t objectid, uint32_t type,
                         item_fn each, void *ctx) {
  struct btrfs_ioctl_search_key *k = &args->key;
  for (;;) {
    k->nr_items = UINT32_MAX; // as many as fit; the kernel writes back how many it returned
    args->buf_size = SEARCH_BUF;
    if (ioctl(fd, BTRFS_IOC_TREE_SEARCH_V2, args) < 0) return throw_errno(env, "BTRFS_IOC_TREE_SEARCH_V2", errno), false;
    if (k->nr_items == 0) return true;
    size_t pos = 0;
    uint64_t last = 0;
    for (uint32_t i = 0; i < k->nr_items; i++) {
      struct btrfs_ioctl_search_header h;
      if (pos + sizeof h > SEARCH_BUF) break;
      memcpy(&h, (const uint8_t *)args->buf + pos, sizeof h); // host order, possibly unaligned
      pos += sizeof h;
      if (pos + h.len > SEARCH_BUF) return throw_errno(env, "BTRFS_IOC_TREE_SEARCH_V2: item past buffer", EIO), false;
      if (h.objectid == objectid && h.type == type && !each(env, &h, (const uint8_t *)args->buf + pos, ctx)) return false;
      pos += h.len;
      last = h.offset;
    }
    // Resume after the last key seen; at max_offset (UINT64_MAX would wrap) we are done.
    if (last >= k->max_offset) return true;
    k->min_offset = last + 1;
  }
}

struct chunk_list {
  napi_value array;
  uint32_t count;
};

static bool add_chunk(napi_env env, const struct btrfs_ioctl_search_header *h, const uint8_t *item, void *ctx) {
  struct chunk_list *l = ctx;
  napi_value obj;
  return chunk_object(env, h->offset, item, h->len, &obj) && napi_set_element(env, l->array, l->count++, obj) == napi_ok;
}

// btrfsChunks(fd): every CHUNK_ITEM of the chunk tree, in logical order.
napi_value btrfs_chunks(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;

  struct btrfs_ioctl_search_args_v2 *args = calloc(1, sizeof *args + SEARCH_BUF);
  if (args == NULL) return throw_errno(env, "malloc", ENOMEM);

  napi_value result = NULL;
  struct chunk_list list = {NULL, 0};
  struct btrfs_ioctl_search_key *k = &args->key;
  // Keys sort by (objectid, type, offset); every chunk item is (256, 228, logical address).
  k->tree_id = BTRFS_CHUNK_TREE_OBJECTID;
  k->min_objectid = k->max_objectid = BTRFS_FIRST_CHUNK_TREE_OBJECTID;
  k->min_type = k->max_type = BTRFS_CHUNK_ITEM_KEY;
  k->min_offset = 0;
  k->max_offset = UINT64_MAX;
  k->min_transid = 0;
  k->max_transid = UINT64_MAX;
  if (napi_create_array(env, &list.array) != napi_ok ||
      !search_items(env, fd, args, BTRFS_FIRST_CHUNK_TREE_OBJECTID, BTRFS_CHUNK_ITEM_KEY, add_chunk, &list))
    goto out;
  result = list.array;
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

// btrfsCsumInfo(fd): { type, size, sectorSize, nodeSize }: the filesystem's data checksum algorithm
// (BTRFS_CSUM_TYPE_*), bytes per checksum, bytes per checksummed sector and per tree node.
napi_value btrfs_csum_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  struct btrfs_ioctl_fs_info_args fs;
  memset(&fs, 0, sizeof fs);
  fs.flags = BTRFS_FS_INFO_FLAG_CSUM_INFO;
  if (ioctl(fd, BTRFS_IOC_FS_INFO, &fs) < 0) return throw_errno(env, "BTRFS_IOC_FS_INFO", errno);
  // A kernel older than 5.5 ignores the flag and leaves csum_size 0: say so rather than guess.
  if (!(fs.flags & BTRFS_FS_INFO_FLAG_CSUM_INFO) || fs.csum_size == 0) return throw_errno(env, "BTRFS_IOC_FS_INFO: no checksum info", EOPNOTSUPP);
  napi_value result;
  CHECK(napi_create_object(env, &result));
  if (!set_num(env, result, "type", fs.csum_type, "btrfs csum type") || !set_num(env, result, "size", fs.csum_size, "btrfs csum size") ||
      !set_num(env, result, "sectorSize", fs.sectorsize, "btrfs sector size") || !set_num(env, result, "nodeSize", fs.nodesize, "btrfs node size"))
    return napi_fail(env);
  return result;
}

// Copy the part of csum item (at logical `item_start`, `item_len` bytes) that covers the sectors of
// [logical, logical + n·sector) into out (n·csum_size bytes); returns the sectors copied.
uint64_t btrfs_csum_overlap(uint64_t item_start, uint32_t item_len, const uint8_t *item, uint64_t logical, uint64_t n,
                             uint32_t sector, uint32_t csum_size, uint8_t *out) {
  uint64_t item_sectors = item_len / csum_size;
  uint64_t a = item_start > logical ? (item_start - logical) / sector : 0;            // first sector of ours it covers
  uint64_t skip = item_start < logical ? (logical - item_start) / sector : 0;         // its sectors before ours
  if (skip >= item_sectors || a >= n) return 0;
  uint64_t count = item_sectors - skip < n - a ? item_sectors - skip : n - a;
  memcpy(out + a * csum_size, item + skip * csum_size, (size_t)(count * csum_size));
  return count;
}

// The checksums wanted, and how many sectors of them the items seen so far covered.
struct csum_range {
  uint64_t logical, n;
  uint32_t sector, csum_size;
  uint8_t *out;
  uint64_t covered;
};

static bool add_csums(napi_env env, const struct btrfs_ioctl_search_header *h, const uint8_t *item, void *ctx) {
  (void)env;
  struct csum_range *r = ctx;
  if (h->offset % r->sector == 0) r->covered += btrfs_csum_overlap(h->offset, h->len, item, r->logical, r->n, r->sector, r->csum_size, r->out);
  return true;
}

// btrfsCsums(fd, logical, length, sectorSize, csumSize, nodeSize) → { csums: Buffer, covered }:
// the data checksums of logical bytes [logical, logical + length) (both multiples of sectorSize),
// one csumSize-byte checksum per sector in order, and how many sectors the csum tree covers (the
// rest are zero bytes: nodatasum data has none). EXTENT_CSUM items are keyed by the logical address
// of their first sector and hold at most one tree node of checksums, so the search starts that many
// sectors before `logical`.
napi_value btrfs_csums(napi_env env, napi_callback_info info) {
  ARGS(6);
  int fd;
  uint64_t logical, length, sector, csum_size, node_size;
  if (!get_fd(env, argv[0], &fd) || !get_uint(env, argv[1], "logical", 9007199254740991.0, &logical) ||
      !get_uint(env, argv[2], "length", 9007199254740991.0, &length) || !get_uint(env, argv[3], "sectorSize", 65536, &sector) ||
      !get_uint(env, argv[4], "csumSize", 64, &csum_size) || !get_uint(env, argv[5], "nodeSize", 65536, &node_size))
    return NULL;
  if (sector == 0 || csum_size == 0 || logical % sector != 0 || length % sector != 0 || length == 0 || length / sector * csum_size > (1u << 30)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "btrfsCsums: logical and length must be positive multiples of the sector size");
    return NULL;
  }
  uint64_t n = length / sector;
  napi_value buffer;
  uint8_t *out;
  CHECK(napi_create_buffer(env, (size_t)(n * csum_size), (void **)&out, &buffer));
  memset(out, 0, (size_t)(n * csum_size));

  struct btrfs_ioctl_search_args_v2 *args = calloc(1, sizeof *args + SEARCH_BUF);
  if (args == NULL) return throw_errno(env, "malloc", ENOMEM);
  napi_value result = NULL;
  uint64_t reach = node_size / csum_size * sector; // the most one item can cover
  struct btrfs_ioctl_search_key *k = &args->key;
  k->tree_id = BTRFS_CSUM_TREE_OBJECTID;
  k->min_objectid = k->max_objectid = BTRFS_EXTENT_CSUM_OBJECTID;
  k->min_type = k->max_type = BTRFS_EXTENT_CSUM_KEY;
  k->min_offset = logical > reach ? logical - reach : 0;
  k->max_offset = logical + length - 1;
  k->min_transid = 0;
  k->max_transid = UINT64_MAX;
  struct csum_range range = {logical, n, (uint32_t)sector, (uint32_t)csum_size, out, 0};
  if (!search_items(env, fd, args, BTRFS_EXTENT_CSUM_OBJECTID, BTRFS_EXTENT_CSUM_KEY, add_csums, &range)) goto out;
  napi_value obj, cov;
  if (napi_create_object(env, &obj) != napi_ok || napi_set_named_property(env, obj, "csums", buffer) != napi_ok ||
      !make_u64(env, range.covered, "covered sectors", &cov) || napi_set_named_property(env, obj, "covered", cov) != napi_ok)
    goto out;
  result = obj;
out:
  free(args);
  return result != NULL ? result : napi_fail(env);
}

struct file_extent_list {
  napi_value array;
  uint32_t count;
};

// One EXTENT_DATA item (key offset = file offset) → {fileOffset, type, compression, encryption,
// otherEncoding, ramBytes} and, for regular and preallocated extents, {diskBytenr, diskNumBytes,
// offset, numBytes}. Inline items hold their data after `type`: nothing more is read of them.
static bool add_file_extent(napi_env env, const struct btrfs_ioctl_search_header *h, const uint8_t *item, void *ctx) {
  struct file_extent_list *l = ctx;
  const size_t head = offsetof(struct btrfs_file_extent_item, disk_bytenr);
  struct btrfs_file_extent_item fe;
  memset(&fe, 0, sizeof fe);
  if (h->len < head) return throw_errno(env, "btrfs file extent item: truncated", EIO), false;
  memcpy(&fe, item, h->len < sizeof fe ? h->len : sizeof fe);
  bool regular = fe.type != BTRFS_FILE_EXTENT_INLINE;
  if (regular && h->len < sizeof fe) return throw_errno(env, "btrfs file extent item: truncated", EIO), false;
  napi_value obj;
  if (napi_create_object(env, &obj) != napi_ok || !set_num(env, obj, "fileOffset", h->offset, "btrfs file extent: file offset") ||
      !set_num(env, obj, "type", fe.type, "btrfs file extent: type") || !set_num(env, obj, "compression", fe.compression, "btrfs file extent: compression") ||
      !set_num(env, obj, "encryption", fe.encryption, "btrfs file extent: encryption") ||
      !set_num(env, obj, "otherEncoding", le16toh(fe.other_encoding), "btrfs file extent: other encoding") ||
      !set_num(env, obj, "ramBytes", le64toh(fe.ram_bytes), "btrfs file extent: ram bytes"))
    return false;
  if (regular && (!set_num(env, obj, "diskBytenr", le64toh(fe.disk_bytenr), "btrfs file extent: disk bytenr") ||
                  !set_num(env, obj, "diskNumBytes", le64toh(fe.disk_num_bytes), "btrfs file extent: disk bytes") ||
                  !set_num(env, obj, "offset", le64toh(fe.offset), "btrfs file extent: offset") ||
                  !set_num(env, obj, "numBytes", le64toh(fe.num_bytes), "btrfs file extent: bytes")))
    return false;
  return napi_set_element(env, l->array, l->count++, obj) == napi_ok;
}

// btrfsFileExtents(fd): the EXTENT_DATA items of the regular file `fd` is open on, in file order, from
// its subvolume's tree (tree id 0: the tree of the fd's own inode, so a snapshot's file reads the
// snapshot's items). FIEMAP says where a compressed extent starts; these say what it is.
napi_value btrfs_file_extents(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  struct stat st;
  if (fstat(fd, &st) < 0) return throw_errno(env, "fstat", errno);
  struct btrfs_ioctl_search_args_v2 *args = calloc(1, sizeof *args + SEARCH_BUF);
  if (args == NULL) return throw_errno(env, "malloc", ENOMEM);
  napi_value result = NULL;
  struct file_extent_list list = {NULL, 0};
  struct btrfs_ioctl_search_key *k = &args->key;
  k->tree_id = 0;
  k->min_objectid = k->max_objectid = st.st_ino;
  k->min_type = k->max_type = BTRFS_EXTENT_DATA_KEY;
  k->min_offset = 0;
  k->max_offset = UINT64_MAX;
  k->min_transid = 0;
  k->max_transid = UINT64_MAX;
  if (napi_create_array(env, &list.array) == napi_ok &&
      search_items(env, fd, args, st.st_ino, BTRFS_EXTENT_DATA_KEY, add_file_extent, &list))
    result = list.array;
  free(args);
  return result != NULL ? result : napi_fail(env);
}

// csumVerify(alg, data, csums, sectorSize) → index of the first sector of `data` whose checksum in
// `csums` does not match, or -1 when all do (alg: XT_CSUM_*, as the view tables name it).
napi_value csum_verify(napi_env env, napi_callback_info info) {
  ARGS(4);
  uint64_t alg, sector;
  uint8_t *data, *csums;
  size_t data_len, csums_len;
  bool a = false, b = false;
  if (!get_uint(env, argv[0], "alg", 255, &alg) || !get_uint(env, argv[3], "sectorSize", 65536, &sector)) return NULL;
  CHECK(napi_is_buffer(env, argv[1], &a));
  CHECK(napi_is_buffer(env, argv[2], &b));
  if (!a || !b) return napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "data and csums must be Buffers"), NULL;
  CHECK(napi_get_buffer_info(env, argv[1], (void **)&data, &data_len));
  CHECK(napi_get_buffer_info(env, argv[2], (void **)&csums, &csums_len));
  size_t csum_size = alg == XT_CSUM_CRC32C ? 4 : 0;
  if (csum_size == 0 || sector == 0 || data_len % sector != 0 || csums_len != data_len / sector * csum_size)
    return napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "csumVerify: unknown algorithm, or data and csums of other lengths"), NULL;
  int64_t bad = -1;
  for (size_t i = 0; i < data_len / sector; i++)
    if (!extfs_csum_ok((uint32_t)alg, data + i * sector, (size_t)sector, csums + i * csum_size)) {
      bad = (int64_t)i;
      break;
    }
  napi_value r;
  CHECK(napi_create_int64(env, bad, &r));
  return r;
}
