// FUSE low-level operations over the immutable tables, run on libfuse's worker threads. Tables are
// checked once at load (xt_check), so an operation only checks what the kernel sends: the nodeid and
// the kind of inode. Nothing here allocates per inode or counts lookups: there is nothing to forget.
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct engine *eng(fuse_req_t req) {
  return fuse_req_userdata(req);
}

// NULL for an inode a shard view hides: every op on it is ENOENT, as if the image had no such inode.
const struct xt_inode *xt_node(const struct engine *e, fuse_ino_t nodeid) {
  if (nodeid == 0 || nodeid > e->t.h->n_inodes || !xt_visible(e, (uint32_t)(nodeid - 1))) return NULL;
  return &e->t.inodes[nodeid - 1];
}

// The node for a request, or NULL after replying ENOENT (the kernel never sends an id we did not give).
static const struct xt_inode *node_or_reply(fuse_req_t req, fuse_ino_t nodeid) {
  const struct xt_inode *n = xt_node(eng(req), nodeid);
  if (n == NULL) fuse_reply_err(req, ENOENT);
  return n;
}

static void fill_stat(const struct engine *e, const struct xt_inode *n, struct stat *st) {
  *st = (struct stat){
    .st_ino = n->ino, .st_mode = n->mode, .st_nlink = n->nlink, .st_uid = n->uid, .st_gid = n->gid,
    .st_rdev = n->rdev, .st_size = (off_t)n->size,
    .st_blocks = (blkcnt_t)n->blocks, // 512-byte units, as allocated on the initiator
    .st_blksize = e->t.h->block_size,
    .st_atim = {n->atime_sec, n->atime_nsec}, .st_mtim = {n->mtime_sec, n->mtime_nsec}, .st_ctim = {n->ctime_sec, n->ctime_nsec},
  };
}

static void fill_entry(const struct engine *e, uint32_t index, struct fuse_entry_param *ep) {
  *ep = (struct fuse_entry_param){.ino = (fuse_ino_t)index + 1, .attr_timeout = XT_TTL, .entry_timeout = XT_TTL};
  fill_stat(e, &e->t.inodes[index], &ep->attr);
}

// Entry names compare as bytes, then by length: the order the packer sorted them in (Buffer.compare).
static int name_cmp(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  return c != 0 ? c : (alen > blen) - (alen < blen);
}

// ------------------------------------------------------------------------------ session setup

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  struct engine *e = userdata;
  // libfuse derives max_pages from max_write (256 pages = 1 MiB, its own buffer limit), and
  // max_pages is what bounds a read request; a read-only view never sees a write.
  conn->max_write = 1u << 20;
  conn->max_readahead = UINT_MAX; // libfuse clips this to what the kernel offered
  conn->max_background = 64;      // async readahead requests in flight
  conn->congestion_threshold = 48;
  conn->time_gran = 1; // nanosecond timestamps
  unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_READDIRPLUS | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_PARALLEL_DIROPS |
                  FUSE_CAP_NO_OPENDIR_SUPPORT | FUSE_CAP_IOCTL_DIR;
  conn->want |= want & conn->capable;
  e->no_opendir = (conn->want & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
  // Always readdirplus, never "auto": a backup stats every entry, and auto mode lists all but the
  // first chunk of a directory plainly, then costs one lookup round trip per entry (the find figures
  // are in docs/native-engine.md). The image is immutable: no writeback, and no cache invalidation
  // when attributes are re-read.
  conn->want &= ~(FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_POSIX_ACL);
}

// ------------------------------------------------------------------------------------- names

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct engine *e = eng(req);
  const struct xt_inode *dir = node_or_reply(req, parent);
  if (dir == NULL) return;
  if (!S_ISDIR(dir->mode)) return (void)fuse_reply_err(req, ENOTDIR);
  size_t len = strlen(name);
  const struct xt_dirent *d = e->t.dirents + dir->first;
  uint32_t lo = 0, hi = dir->count;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    int c = name_cmp(e->t.names + d[mid].name_off, d[mid].name_len, name, len);
    if (c == 0 && xt_visible(e, d[mid].child)) {
      struct fuse_entry_param ep;
      fill_entry(e, d[mid].child, &ep);
      return (void)fuse_reply_entry(req, &ep);
    }
    if (c == 0) break; // hidden by a shard view: as missing
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  // A negative entry (ino 0), cached as long as a positive one: a missing name never appears.
  fuse_reply_entry(req, &(struct fuse_entry_param){.entry_timeout = XT_TTL});
}

static void op_getattr(fuse_req_t req, fuse_ino_t nodeid, struct fuse_file_info *fi) {
  (void)fi;
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  struct stat st;
  fill_stat(eng(req), n, &st);
  fuse_reply_attr(req, &st, XT_TTL);
}

static void op_readlink(fuse_req_t req, fuse_ino_t nodeid) {
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  if (!S_ISLNK(n->mode)) return (void)fuse_reply_err(req, EINVAL);
  fuse_reply_readlink(req, eng(req)->t.data + n->first); // NUL-terminated in the data blob
}

// --------------------------------------------------------------------------------- directories

static void op_opendir(fuse_req_t req, fuse_ino_t nodeid, struct fuse_file_info *fi) {
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  if (!S_ISDIR(n->mode)) return (void)fuse_reply_err(req, ENOTDIR);
  // Where the kernel can do without opendir (and releasedir), ENOSYS says so once: it then opens
  // directories itself, with the listing cached, and saves two round trips per directory.
  if (eng(req)->no_opendir) return (void)fuse_reply_err(req, ENOSYS);
  fi->cache_readdir = 1; // the kernel may keep the listing: it never changes
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

// Positions: 0 is ".", 1 is "..", 2 + i is dirents[first + i]. An entry's offset is the position of
// the next one, so a listing resumes exactly where the kernel's buffer ran full. A shard view skips
// the entries it hides; the positions stay those of the whole directory.
static void do_readdir(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, int plus) {
  struct engine *e = eng(req);
  const struct xt_inode *dir = node_or_reply(req, nodeid);
  if (dir == NULL) return;
  if (!S_ISDIR(dir->mode)) return (void)fuse_reply_err(req, ENOTDIR);
  char *buf = malloc(size > 0 ? size : 1);
  if (buf == NULL) return (void)fuse_reply_err(req, ENOMEM);
  size_t used = 0;
  uint64_t end = (uint64_t)dir->count + 2, from = off < 0 ? 0 : (uint64_t)off, p;
  for (p = from; p < end; p++) {
    const char *name;
    uint32_t child;
    if (p < 2) {
      name = p == 0 ? "." : "..";
      child = p == 0 ? (uint32_t)(dir - e->t.inodes) : dir->parent;
    } else {
      const struct xt_dirent *d = &e->t.dirents[dir->first + (p - 2)];
      if (!xt_visible(e, d->child)) continue;
      name = e->t.names + d->name_off;
      child = d->child;
    }
    size_t n;
    if (plus) {
      struct fuse_entry_param ep;
      fill_entry(e, child, &ep);
      if (p < 2) ep.ino = 0; // the kernel links no dentry for "." and ".."; nothing to look up
      n = fuse_add_direntry_plus(req, buf + used, size - used, name, &ep, (off_t)(p + 1));
    } else {
      struct stat st = {.st_ino = e->t.inodes[child].ino, .st_mode = e->t.inodes[child].mode};
      n = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(p + 1));
    }
    if (n > size - used) break; // did not fit: the kernel asks again from this offset
    used += n;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
  // The kernel now holds inodes for these entries, so their data can be stored ahead (prefetch.c).
  // A plain listing creates none: nothing to store into.
  if (plus) xt_prefetch_listed(e, (uint32_t)(dir - e->t.inodes), from, p);
}

static void op_readdir(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  do_readdir(req, nodeid, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t nodeid, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  do_readdir(req, nodeid, size, off, 1);
}

// --------------------------------------------------------------------------------------- files

// Every open is checked against the config-ID record (config.c): one stat(2) when it is unchanged.
static void op_open(fuse_req_t req, fuse_ino_t nodeid, struct fuse_file_info *fi) {
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) return (void)fuse_reply_err(req, EROFS);
  if (S_ISDIR(n->mode)) return (void)fuse_reply_err(req, EISDIR);
  int err = xt_config_check(eng(req), (uint32_t)(nodeid - 1));
  if (err != 0) return (void)fuse_reply_err(req, err);
  fi->keep_cache = 1; // cached pages stay valid across opens (a delta drops a moved file's: delta.c)
  fi->noflush = 1;    // nothing to flush on close: saves a round trip per file
  static _Atomic uint64_t opens;
  fi->fh = atomic_fetch_add(&opens, 1) + 1; // names this open to push-ahead (push.c)
  struct engine *e = eng(req); // the request is gone once answered
  xt_stats_open(e, (uint32_t)(nodeid - 1));
  fuse_reply_open(req, fi);
  xt_prefetch_open(e, (uint32_t)(nodeid - 1)); // after the reply: the opener waits for nothing here
}

// A file closed: its push-ahead job, if any, ends (push.c). Nothing else to close.
static void op_release(fuse_req_t req, fuse_ino_t nodeid, struct fuse_file_info *fi) {
  if (xt_node(eng(req), nodeid) != NULL) xt_push_release(eng(req), fi->fh, (uint32_t)(nodeid - 1));
  fuse_reply_err(req, 0);
}

// -------------------------------------------------------------------------------------- xattrs

// Reply with `len` bytes at `p`, following the xattr protocol: size 0 asks for the length, a
// buffer too small is ERANGE (the caller retries with a larger one).
static void reply_xattr_bytes(fuse_req_t req, size_t size, const void *p, size_t len) {
  if (size == 0) fuse_reply_xattr(req, len);
  else if (size < len) fuse_reply_err(req, ERANGE);
  else fuse_reply_buf(req, p, len);
}

// A POSIX ACL's xattr name (system.posix_acl_access or _default).
static int is_acl_name(const char *name, size_t len) {
  static const char access[] = "system.posix_acl_access", dflt[] = "system.posix_acl_default";
  return (len == sizeof access - 1 && memcmp(name, access, len) == 0) || (len == sizeof dflt - 1 && memcmp(name, dflt, len) == 0);
}

// The kernel reads a POSIX ACL itself, into one page, whatever the application's buffer
// (fs/fuse/acl.c), and turns our ERANGE into E2BIG for the application: no retry can follow, so an
// ACL larger than what was asked is one the application cannot have. Reported, never silent.
static void report_acl_unserved(struct engine *e, uint32_t index, const char *name, uint32_t len, size_t asked) {
  struct xt_event ev = {.kind = XT_EV_ACL_UNSERVED, .index = index, .value_len = len, .asked = (uint64_t)asked};
  snprintf(ev.reason, sizeof ev.reason, "%s", name);
  xt_post_event(e, &ev);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t nodeid, const char *name, size_t size) {
  struct engine *e = eng(req);
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  size_t len = strlen(name);
  const struct xt_xattr *x = e->t.xattrs + n->xattr_first;
  for (uint32_t i = 0; i < n->xattr_count; i++) {
    if (x[i].name_len != len || memcmp(e->t.data + x[i].name_off, name, len) != 0) continue;
    if (size != 0 && size < x[i].value_len && is_acl_name(name, len))
      report_acl_unserved(e, (uint32_t)(nodeid - 1), name, x[i].value_len, size);
    return reply_xattr_bytes(req, size, e->t.data + x[i].value_off, x[i].value_len);
  }
  fuse_reply_err(req, ENODATA);
}

void xt_acls_over(const struct xt_tables *t, uint64_t limit, void (*each)(void *ctx, uint32_t index, const char *name, uint32_t len), void *ctx,
                  void (*pace)(void *arg), void *arg) {
  if (t->h->n_xattrs == 0) return; // no inode has any: nothing to walk
  for (uint32_t i = 0; i < t->h->n_inodes; i++) {
    if (pace != NULL && (i & 0xffff) == 0xffff) pace(arg);
    const struct xt_inode *n = &t->inodes[i];
    const struct xt_xattr *x = t->xattrs + n->xattr_first;
    for (uint32_t k = 0; k < n->xattr_count; k++) {
      const char *name = t->data + x[k].name_off;
      if (x[k].value_len > limit && is_acl_name(name, x[k].name_len)) each(ctx, i, name, x[k].value_len);
    }
  }
}

static void op_listxattr(fuse_req_t req, fuse_ino_t nodeid, size_t size) {
  struct engine *e = eng(req);
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  if (n->xattr_count == 0) return reply_xattr_bytes(req, size, "", 0);
  // The inode's names lie back to back in the data blob, NUL-terminated: the reply as it stands.
  const struct xt_xattr *first = &e->t.xattrs[n->xattr_first], *last = first + n->xattr_count - 1;
  size_t len = (size_t)last->name_off + last->name_len + 1 - first->name_off;
  reply_xattr_bytes(req, size, e->t.data + first->name_off, len);
}

// lsattr and backup tools that keep chattr's flags (borg) ask with FS_IOC_GETFLAGS; the kernel sends it
// here (fuse_fileattr_get) after opening the file. The flags are the initiator's; every other ioctl,
// and every attempt to set flags, is refused.
static void op_ioctl(fuse_req_t req, fuse_ino_t nodeid, unsigned int cmd, void *arg, struct fuse_file_info *fi,
                     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz) {
  (void)arg, (void)fi, (void)in_buf, (void)in_bufsz;
  const struct xt_inode *n = node_or_reply(req, nodeid);
  if (n == NULL) return;
  if (flags & FUSE_IOCTL_COMPAT) return (void)fuse_reply_err(req, ENOSYS);
  if (cmd == FS_IOC_SETFLAGS || cmd == FS_IOC_FSSETXATTR) return (void)fuse_reply_err(req, EROFS);
  if (cmd != FS_IOC_GETFLAGS) return (void)fuse_reply_err(req, ENOTTY);
  if (out_bufsz < sizeof(int)) return (void)fuse_reply_err(req, EINVAL);
  int attrs = (int)n->attrs; // the kernel reads an int, whatever the ioctl number's `long` says
  fuse_reply_ioctl(req, 0, &attrs, sizeof attrs);
}

static void op_statfs(fuse_req_t req, fuse_ino_t nodeid) {
  (void)nodeid;
  const struct engine *e = eng(req);
  const struct xt_header *h = e->t.h;
  struct statvfs s = {.f_bsize = h->sf_bsize, .f_frsize = h->sf_frsize, .f_blocks = h->sf_blocks, .f_bfree = h->sf_bfree,
                      .f_bavail = h->sf_bavail, .f_files = h->sf_files, .f_ffree = h->sf_ffree, .f_favail = h->sf_favail,
                      .f_namemax = h->sf_namemax};
  // A shard view counts what it shows, as a whole view counts the image (the header's figures): df
  // and a backup tool's estimate then speak of the shard the job copies.
  if (e->visible != NULL && h->sf_frsize > 0) {
    s.f_blocks = (e->stats.shown_blocks512 * 512 + h->sf_frsize - 1) / h->sf_frsize;
    s.f_files = e->stats.shown_inodes;
  }
  fuse_reply_statfs(req, &s);
}

// ---------------------------------------------------------------------------- read-only refusals
// The mount is `ro`, so the VFS refuses most of these before they reach us; answer EROFS anyway.

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define REFUSE(name, ...) static void name(fuse_req_t req, __VA_ARGS__) { fuse_reply_err(req, EROFS); }
REFUSE(op_setattr, fuse_ino_t i, struct stat *a, int s, struct fuse_file_info *f)
REFUSE(op_mknod, fuse_ino_t p, const char *n, mode_t m, dev_t d)
REFUSE(op_mkdir, fuse_ino_t p, const char *n, mode_t m)
REFUSE(op_unlink, fuse_ino_t p, const char *n)
REFUSE(op_symlink, const char *l, fuse_ino_t p, const char *n)
REFUSE(op_rename, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn, unsigned f)
REFUSE(op_link, fuse_ino_t i, fuse_ino_t np, const char *nn)
REFUSE(op_write, fuse_ino_t i, const char *b, size_t s, off_t o, struct fuse_file_info *f)
REFUSE(op_create, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *f)
REFUSE(op_setxattr, fuse_ino_t i, const char *n, const char *v, size_t s, int f)
REFUSE(op_removexattr, fuse_ino_t i, const char *n)
REFUSE(op_fallocate, fuse_ino_t i, int m, off_t o, off_t l, struct fuse_file_info *f)
#pragma GCC diagnostic pop

// Left out on purpose, libfuse answers them: forget and forget_multi (nothing to free: the tables are
// immutable and lookups are not counted) and releasedir (nothing to close: success).
const struct fuse_lowlevel_ops xt_ops = {
  .init = op_init,
  .lookup = op_lookup,
  .getattr = op_getattr,
  .readlink = op_readlink,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .open = op_open,
  .read = xt_read,
  .release = op_release,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .ioctl = op_ioctl,
  .statfs = op_statfs,
  .setattr = op_setattr,
  .mknod = op_mknod,
  .mkdir = op_mkdir,
  .unlink = op_unlink,
  .rmdir = op_unlink,
  .symlink = op_symlink,
  .rename = op_rename,
  .link = op_link,
  .write = op_write,
  .create = op_create,
  .setxattr = op_setxattr,
  .removexattr = op_removexattr,
  .fallocate = op_fallocate,
};
