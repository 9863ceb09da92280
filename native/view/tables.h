// The view's tables: one immutable, little-endian image (layout mirrored by src/native-engine/tables.ts) packed by load2*.c from a
// validated manifest. This header and that module are the two halves of one contract; the addon
// exports every struct's size and field offsets (layout()) and JS refuses to run if they disagree.
//
//   header | inodes[n_inodes] | dirents[n_dirents] | extents[n_extents] | xattrs[n_xattrs]
//          | devices[n_devices] | copies[n_copies] | names blob | data blob   (each section 8-aligned)
//
// - Inodes by dense index; index 0 is the root. FUSE nodeid = index + 1, so the root is FUSE_ROOT_ID.
//   Hard links are one index reached from several dirents. st_ino is the manifest's `ino`.
// - Dirents of one directory are contiguous and sorted by name bytes (memcmp, then shorter first):
//   lookup is a binary search, readdir walks them in order and uses the position as the offset.
// - Names blob: entry names, UTF-8, each followed by a NUL (fuse_add_direntry wants C strings).
// - Extents of one file are contiguous and sorted by file_offset, non-overlapping, non-empty (as
//   validated, and checked again by xt_check: the read plan depends on it).
// - Data blob: symlink targets (NUL-terminated), inline file contents, xattr name lists (one inode's
//   names back to back, each NUL-terminated: exactly what listxattr returns), xattr values and the
//   data checksums of extents with XT_EXT_CSUM. Identical values and name lists are stored once.
// - Data checksums (manifest feature "data-checksums", btrfs mirrored profiles): an extent with
//   XT_EXT_CSUM has one csum_size-byte checksum per sector_size bytes of its length at
//   data[csum_off], and copy_count other copies (mirrors) of the same bytes at
//   copies[copy_first ..]. Reads verify every sector and fall back to the copies (read.c).
// - Compressed extents (manifest feature "compressed-extents", btrfs compress=): an extent with
//   XT_EXT_COMPRESSED (always with XT_EXT_CSUM: btrfs checksums the compressed bytes) holds its
//   bytes encoded: disk_length bytes at device_offset (and at each copy) decode to at most
//   decoded_length bytes, of which the file's `length` bytes start at decoded_offset. That
//   struct xt_compressed lies in the data blob just before the extent's checksums, at
//   data[csum_off - sizeof(struct xt_compressed)], so the checksums stay where csum_off says and
//   every extent keeps its 40 bytes. The checksums cover disk_length (whole sectors), not `length`.
// Blob offsets are u32: the packer refuses images whose blobs pass 4 GiB.
#ifndef EXTFS_VIEW_TABLES_H
#define EXTFS_VIEW_TABLES_H

#include <stddef.h>
#include <stdint.h>

#define XT_MAGIC 0x54565845u // "EXVT" read as a little-endian u32
#define XT_VERSION 4u

// xt_inode.flags
#define XT_INLINE 1u // regular file whose content is in the data blob (first = offset, count = length)
// xt_extent.flags
#define XT_EXT_CSUM 1u // the extent's sectors have checksums at data[csum_off] (header: csum_alg, sector_size)
#define XT_EXT_COMPRESSED 2u // the extent's bytes are encoded: a struct xt_compressed precedes its checksums

// xt_compressed.algorithm: btrfs's own numbering (BTRFS_COMPRESS_*)
#define XT_ZLIB 1u
#define XT_LZO 2u
#define XT_ZSTD 3u
// btrfs's bounds (BTRFS_MAX_COMPRESSED, BTRFS_MAX_UNCOMPRESSED): a compressed extent takes at most
// 128 KiB on disk and decodes to at most 128 KiB.
#define XT_ENCODED_MAX (128u * 1024u)
#define XT_DECODED_MAX (128u * 1024u)

struct xt_header {
  uint32_t magic, version;
  uint64_t total_size; // bytes of the whole image, header included
  uint32_t n_inodes, n_dirents, n_extents, n_xattrs, n_devices;
  uint32_t block_size; // st_blksize and statfs f_bsize
  uint64_t inodes_off, dirents_off, extents_off, xattrs_off, devices_off; // byte offsets in the image
  uint64_t names_off, names_size, data_off, data_size;
  // statfs figures, as FrozenView.statfs() reports them (blocks in units of frsize)
  uint64_t sf_bsize, sf_frsize, sf_blocks, sf_bfree, sf_bavail, sf_files, sf_ffree, sf_favail, sf_namemax;
  // Data checksums: csum_alg XT_CSUM_* (native/csum.h; XT_CSUM_NONE: no extent has XT_EXT_CSUM),
  // csum_size bytes per sector of sector_size bytes.
  uint32_t n_copies, csum_alg, csum_size, sector_size;
  uint64_t copies_off;
};

struct xt_inode {
  uint64_t ino;    // st_ino: the manifest's inode number
  uint64_t size;   // bytes
  uint64_t blocks; // st_blocks: 512-byte units allocated on the initiator
  uint64_t rdev;   // st_rdev for char/block nodes, Linux dev_t encoding
  int64_t atime_sec, mtime_sec, ctime_sec;
  uint32_t atime_nsec, mtime_nsec, ctime_nsec;
  uint32_t uid, gid, nlink;
  // What `first`/`count` mean depends on the kind:
  //   dir: dirents[first .. first+count);  file: extents[first .. first+count), or with XT_INLINE
  //   data[first .. first+count);  symlink: target at data[first], count bytes (NUL follows).
  uint32_t first, count;
  uint32_t xattr_first, xattr_count; // xattrs[xattr_first .. +xattr_count), in manifest order
  uint32_t parent;                   // index of the (first) directory naming it; the root names itself
  uint16_t mode;                     // st_mode: type bits | permission bits
  uint16_t flags;                    // XT_INLINE
  uint32_t attrs;                    // files and directories: chattr's flags (FS_IOC_GETFLAGS), else 0
};

struct xt_dirent {
  uint32_t name_off; // in the names blob
  uint32_t child;    // inode index
  uint16_t name_len; // bytes, without the NUL (at most 255)
  uint16_t reserved;
};

struct xt_extent {
  uint64_t file_offset;
  uint64_t device_offset; // on the raw device, partition start included
  uint64_t length;
  uint32_t device;     // index into devices
  uint32_t copy_first; // the other copies: copies[copy_first .. +copy_count)
  uint32_t csum_off;   // XT_EXT_CSUM: the checksums in the data blob
  uint16_t copy_count;
  uint16_t flags; // XT_EXT_CSUM
};

// How a compressed extent is encoded (in the data blob, just before its checksums; not aligned: read
// with memcpy). See the top of this file.
struct xt_compressed {
  uint32_t algorithm;      // XT_ZLIB, XT_LZO, XT_ZSTD
  uint32_t disk_length;    // bytes of the encoded stream at device_offset (and at each copy), whole sectors
  uint32_t decoded_length; // bytes it decodes to at most (btrfs ram_bytes), at most XT_DECODED_MAX
  uint32_t decoded_offset; // the extent's first file byte is this byte of the decoded data
};

// Another copy (a btrfs mirror) of an extent's bytes: the same length at device_offset on device.
struct xt_copy {
  uint64_t device_offset;
  uint32_t device; // index into the tables' devices
  uint32_t reserved;
};

struct xt_xattr {
  uint32_t name_off;  // in the data blob, NUL-terminated; one inode's names are back to back
  uint32_t value_off; // in the data blob
  uint32_t value_len;
  uint16_t name_len; // bytes, without the NUL
  uint16_t reserved;
};

struct xt_device {
  int32_t fd; // open O_RDONLY|O_DIRECT by the control plane, which also closes it after unmount
  uint32_t reserved;
  uint64_t size; // bytes, as the manifest states it
};

// A delta (docs/native-engine.md, "Deltas"): new extent lists for some regular files and new
// devices, packed by src/native-engine/delta-tables.ts and applied by applyDelta() in one step.
//
//   delta_header | files[n_files] | extents[n_extents] | devices[n_devices] | copies[n_copies]
//                | data blob   (each section 8-aligned)
//
// - files sorted by inode index (as the tables number inodes), each at most once; a file's extents
//   are extents[first .. first+count), the files' ranges back to back in file order. Only regular
//   files with extents may be named (inline content is not replaced).
// - extents as in the tables: sorted by file_offset, non-overlapping, length > 0; `device` indexes
//   the tables' devices followed by this delta's (and earlier deltas') new ones. An extent with
//   XT_EXT_CSUM has its copies at this delta's copies[copy_first ..] and its checksums at this
//   delta's data[csum_off], measured as the tables' header says (csum_alg, sector_size): an image
//   keeps its checksum algorithm. A compressed extent's struct xt_compressed precedes its checksums
//   in this delta's data blob, as in the tables.
// - devices: the new ones, appended in this order; `fd` is ignored (applyDelta's deviceFds give them).
#define XT_DELTA_MAGIC 0x44565845u // "EXVD" read as a little-endian u32
#define XT_DELTA_VERSION 3u

struct xt_delta_header {
  uint32_t magic, version;
  uint64_t total_size; // bytes of the whole delta, header included
  uint32_t n_files, n_extents, n_devices, n_copies;
  uint64_t files_off, extents_off, devices_off, copies_off; // byte offsets in the delta
  uint64_t data_off, data_size;                             // the checksums blob
};

struct xt_delta_file {
  uint32_t index; // inode index in the tables
  uint32_t first, count;
  uint32_t reserved;
};

// Field lists, used by layout() to export offsets. Keep in step with the structs above.
#define XT_HEADER_FIELDS(F)                                                                                  \
  F(magic) F(version) F(total_size) F(n_inodes) F(n_dirents) F(n_extents) F(n_xattrs) F(n_devices)          \
  F(block_size) F(inodes_off) F(dirents_off) F(extents_off) F(xattrs_off) F(devices_off) F(names_off)       \
  F(names_size) F(data_off) F(data_size) F(sf_bsize) F(sf_frsize) F(sf_blocks) F(sf_bfree) F(sf_bavail)    \
  F(sf_files) F(sf_ffree) F(sf_favail) F(sf_namemax) F(n_copies) F(csum_alg) F(csum_size) F(sector_size)   \
  F(copies_off)
#define XT_INODE_FIELDS(F)                                                                                   \
  F(ino) F(size) F(blocks) F(rdev) F(atime_sec) F(mtime_sec) F(ctime_sec) F(atime_nsec) F(mtime_nsec)       \
  F(ctime_nsec) F(uid) F(gid) F(nlink) F(first) F(count) F(xattr_first) F(xattr_count) F(parent) F(mode)   \
  F(flags) F(attrs)
#define XT_DIRENT_FIELDS(F) F(name_off) F(child) F(name_len) F(reserved)
#define XT_EXTENT_FIELDS(F) F(file_offset) F(device_offset) F(length) F(device) F(copy_first) F(csum_off) F(copy_count) F(flags)
#define XT_COPY_FIELDS(F) F(device_offset) F(device) F(reserved)
#define XT_COMPRESSED_FIELDS(F) F(algorithm) F(disk_length) F(decoded_length) F(decoded_offset)
#define XT_XATTR_FIELDS(F) F(name_off) F(value_off) F(value_len) F(name_len) F(reserved)
#define XT_DEVICE_FIELDS(F) F(fd) F(reserved) F(size)
#define XT_DELTA_HEADER_FIELDS(F)                                                                            \
  F(magic) F(version) F(total_size) F(n_files) F(n_extents) F(n_devices) F(n_copies) F(files_off)          \
  F(extents_off) F(devices_off) F(copies_off) F(data_off) F(data_size)
#define XT_DELTA_FILE_FIELDS(F) F(index) F(first) F(count) F(reserved)

// A loaded image: pointers into one malloc'd copy, checked once by xt_check() so that the request
// path can trust every index and offset in it.
struct xt_tables {
  void *image;
  const struct xt_header *h;
  const struct xt_inode *inodes;
  const struct xt_dirent *dirents;
  const struct xt_extent *extents;
  const struct xt_xattr *xattrs;
  const struct xt_device *devices;
  const struct xt_copy *copies;
  const char *names;
  const char *data;
};

// Check every section bound, index and blob range of a packed image (len bytes at image), every
// file's extents (sorted, disjoint, non-empty; copies and checksums in range, lengths whole sectors)
// and every inline file's length (its size), and fill
// `t`. Returns NULL, or a static message saying what is wrong. Defined in check.c.
const char *xt_check(const void *image, uint64_t len, struct xt_tables *t);
// xt_check calling pace(arg) every 65536 items of each of its sweeps (tables mapped from a file: the
// caller drops the pages checked so far, check.c), and the first part of it alone: the header and
// every section and blob inside the image, `t` filled (what indexing the sections needs, no more).
const char *xt_check_paced(const void *image, uint64_t len, struct xt_tables *t, void (*pace)(void *arg), void *arg);
const char *xt_check_sections(const void *image, uint64_t len, struct xt_tables *t);

// An extent's flags, device, other copies (copies[copy_first ..] of n_copies, each on one of
// n_devices, the same length inside 64 bits), checksums (whole sectors as header `h` measures
// them, inside the data blob `data` of data_size bytes) and, compressed, its struct xt_compressed
// (a known algorithm, lengths within btrfs's bounds, the file's bytes inside the decoded ones):
// NULL, or what is wrong. The tables' extents and a delta's are checked by it alike. Defined in engine.c.
const char *xt_check_extent_extras(const struct xt_header *h, const struct xt_extent *x, uint64_t n_devices, const struct xt_copy *copies,
                                   uint64_t n_copies, const char *data, uint64_t data_size);
// The struct xt_compressed of extent x (XT_EXT_COMPRESSED, checked) in data blob `data`.
static inline struct xt_compressed xt_compressed_of(const struct xt_extent *x, const char *data) {
  struct xt_compressed z;
  __builtin_memcpy(&z, data + x->csum_off - sizeof z, sizeof z);
  return z;
}

// Check a packed delta (len bytes at buf, 8-aligned) against checked tables `t`, with n_old devices
// so far (the tables' and earlier deltas') and n_fds device fds given for its new ones: every check
// applyDelta makes before it changes anything. 0, or -1 with `msg` saying what is wrong and, for a
// file, which one. Defined in check.c.
int xt_check_delta(const struct xt_tables *t, const void *buf, uint64_t len, uint32_t n_old, uint32_t n_fds, char *msg, size_t msg_len);

#endif
