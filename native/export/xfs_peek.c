// Whether an inode's attribute fork is certainly empty, from its on-disk inode. On this kernel XFS
// gives new inodes an (empty) attribute fork whenever a security module is present
// (xfs_create_need_xattr), so bulkstat's bs_forkoff != 0 does not mean "has xattrs", and opening every
// such inode by handle to list nothing would put each one in the owner's dentry and inode caches.
// Bulkstat has no count of xattrs, and every other call that has one (ATTRLIST_BY_HANDLE,
// FS_IOC_FSGETXATTRA) decodes a handle into a dentry first. So the inode itself is read from the
// frozen device (FIFREEZE wrote every logged inode back; O_DIRECT reads past the block device's
// page cache), only as far as the attribute fork's shortform header. The answer only ever skips work:
// anything but a v3 inode whose magic, inode number and generation match bulkstat's, with an attribute
// fork in extents format with no extents or in local format with no entries, is "maybe", and the
// inode is opened and listed as before.
#include "xfs_map.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xfs/xfs_format.h>
#include <xfs/xfs_da_format.h>

#define CHUNK_INODES 64u // XFS allocates inodes in chunks of 64, contiguous on disk

bool xm_peek_open(struct xfs_mapper *m) {
  m->peek.fd = -1;
  if (m->job->device == NULL) return true;
  m->peek.len = (size_t)CHUNK_INODES * m->inode_size;
  if (m->peek.len % m->block_size != 0) return true; // chunks not block-aligned: peek disabled, never wrong
  if (posix_memalign((void **)&m->peek.buf, m->block_size, m->peek.len) != 0) return xm_fail(m, "out of memory");
  m->peek.fd = open(m->job->device, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (m->peek.fd < 0) return true; // no O_DIRECT here: every inode with an attribute fork is listed
  m->peek.at = UINT64_MAX;
  return true;
}

void xm_peek_close(struct xfs_mapper *m) {
  if (m->peek.fd >= 0) close(m->peek.fd);
  free(m->peek.buf);
}

// The on-disk inode `ino` in the chunk buffer, or NULL when it cannot be read.
static const struct xfs_dinode *inode_at(struct xfs_mapper *m, uint64_t ino) {
  uint64_t agno = ino >> m->agino_log, agino = ino & ((1ull << m->agino_log) - 1);
  uint64_t first = agino & ~(uint64_t)(CHUNK_INODES - 1);
  // XFS_AGB_TO_DADDR: an AG is sb_agblocks blocks (not its power of two); inopblog inodes per block.
  uint64_t byte = (agno * m->ag_blocks + (first >> m->inopblog)) * m->block_size + (first & ((1u << m->inopblog) - 1)) * m->inode_size;
  if (byte % m->block_size != 0) return NULL;
  if (byte != m->peek.at) {
    m->peek.at = UINT64_MAX;
    if (pread(m->peek.fd, m->peek.buf, m->peek.len, (off_t)byte) != (ssize_t)m->peek.len) return NULL;
    m->peek.at = byte;
  }
  return (const struct xfs_dinode *)(m->peek.buf + (agino - first) * m->inode_size);
}

bool xm_attrs_certainly_empty(struct xfs_mapper *m, const struct xfs_bulkstat *bs) {
  if (m->peek.fd < 0) return false;
  const struct xfs_dinode *d = inode_at(m, bs->bs_ino);
  if (d == NULL || be16toh(d->di_magic) != XFS_DINODE_MAGIC || d->di_version != 3 || be64toh(d->di_ino) != bs->bs_ino || be32toh(d->di_gen) != bs->bs_gen) return false;
  if (d->di_forkoff == 0) return false;
  // What xfs_init_new_inode makes: an extents-format fork of no extents (bulkstat counts them).
  if (d->di_aformat == XFS_DINODE_FMT_EXTENTS) return bs->bs_aextents == 0;
  // What removing the last xattr leaves: a shortform fork of no entries.
  if (d->di_aformat != XFS_DINODE_FMT_LOCAL) return false;
  size_t at = xfs_dinode_size(3) + ((size_t)d->di_forkoff << 3);
  if (at + sizeof(struct xfs_attr_sf_hdr) > m->inode_size) return false;
  const struct xfs_attr_sf_hdr *h = (const void *)((const char *)d + at);
  return h->count == 0 && be16toh(h->totsize) == sizeof *h;
}
