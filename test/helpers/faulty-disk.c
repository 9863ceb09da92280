// A disk that fails reads on one range, for tests (test/helpers/faulty-disk.ts builds and drives it):
// a libfuse3 filesystem of two files, `disk`, backed by a real image file, and `ctl`.
//
//   faulty-disk IMAGE MOUNTPOINT
//
// Writing "arm START LENGTH" to ctl makes every read request of `disk` that overlaps bytes
// [START, START+LENGTH) fail with EIO, whole; "disarm" serves them again (the range is kept, to count
// reads of it). "hold START LENGTH" makes such requests wait instead (at most 30 s) until "let go":
// a read in flight for as long as a test needs. Reading ctl answers "armed A start S length L eio E
// hits H reads R held D": the requests failed, the requests that overlapped the range (armed or
// not), all read requests of `disk`, and the requests that waited on a hold.
// Both files are opened with direct_io: the kernel caches nothing of them, so every read of the loop
// device attached to `disk` (losetup --direct-io=off) that misses the loop's own page cache reaches
// this process. Writes go to the image (mkfs, the filesystem on the loop device).
// The process ends on SIGTERM/SIGINT (unmounting), and when its parent dies (PR_SET_PDEATHSIG).
#define FUSE_USE_VERSION 314
#include <fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int image_fd = -1;
static off_t image_size;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t let_go = PTHREAD_COND_INITIALIZER;
static int armed, holding;
static uint64_t fault_start, fault_length, n_eio, n_hits, n_reads, n_held;

enum node { NONE, ROOT, DISK, CTL };

static enum node node_of(const char *path) {
  if (strcmp(path, "/") == 0) return ROOT;
  if (strcmp(path, "/disk") == 0) return DISK;
  if (strcmp(path, "/ctl") == 0) return CTL;
  return NONE;
}

static void *fd_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  (void)conn;
  cfg->direct_io = 1; // no page cache of either file: every read comes here
  cfg->kernel_cache = 0;
  cfg->attr_timeout = 0;
  cfg->entry_timeout = 0;
  return NULL;
}

static int fd_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  (void)fi;
  memset(st, 0, sizeof *st);
  switch (node_of(path)) {
  case ROOT:
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return 0;
  case DISK:
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_size = image_size;
    return 0;
  case CTL:
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    return 0;
  default:
    return -ENOENT;
  }
}

static int fd_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
  (void)off, (void)fi, (void)flags;
  if (node_of(path) != ROOT) return -ENOTDIR;
  fill(buf, ".", NULL, 0, 0);
  fill(buf, "..", NULL, 0, 0);
  fill(buf, "disk", NULL, 0, 0);
  fill(buf, "ctl", NULL, 0, 0);
  return 0;
}

static int fd_open(const char *path, struct fuse_file_info *fi) {
  enum node n = node_of(path);
  if (n == NONE) return -ENOENT;
  if (n == ROOT) return -EISDIR;
  fi->direct_io = 1;
  return 0;
}

static int fd_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  if (node_of(path) == CTL) {
    char text[256];
    pthread_mutex_lock(&mu);
    int len = snprintf(text, sizeof text, "armed %d start %" PRIu64 " length %" PRIu64 " eio %" PRIu64 " hits %" PRIu64 " reads %" PRIu64 " held %" PRIu64 "\n",
                       armed, fault_start, fault_length, n_eio, n_hits, n_reads, n_held);
    pthread_mutex_unlock(&mu);
    if (off >= len) return 0;
    size_t n = (size_t)(len - off) < size ? (size_t)(len - off) : size;
    memcpy(buf, text + off, n);
    return (int)n;
  }
  if (node_of(path) != DISK) return -ENOENT;
  pthread_mutex_lock(&mu);
  n_reads++;
  int overlaps = fault_length > 0 && (uint64_t)off < fault_start + fault_length && fault_start < (uint64_t)off + size;
  int fail = overlaps && armed;
  n_hits += overlaps;
  n_eio += fail;
  if (overlaps && holding) {
    n_held++;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    while (holding && pthread_cond_timedwait(&let_go, &mu, &until) == 0) continue;
  }
  pthread_mutex_unlock(&mu);
  if (fail) return -EIO;
  size_t got = 0;
  while (got < size) {
    ssize_t r = pread(image_fd, buf + got, size - got, off + (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) break;
    got += (size_t)r;
  }
  return (int)got;
}

static int fd_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  if (node_of(path) == CTL) {
    char cmd[128];
    uint64_t s, l;
    if (off != 0 || size >= sizeof cmd) return -EINVAL;
    memcpy(cmd, buf, size);
    cmd[size] = '\0';
    if (sscanf(cmd, "arm %" SCNu64 " %" SCNu64, &s, &l) == 2 && l > 0) {
      pthread_mutex_lock(&mu);
      armed = 1, fault_start = s, fault_length = l;
      pthread_mutex_unlock(&mu);
    } else if (strncmp(cmd, "disarm", 6) == 0) {
      pthread_mutex_lock(&mu);
      armed = 0;
      pthread_mutex_unlock(&mu);
    } else if (sscanf(cmd, "hold %" SCNu64 " %" SCNu64, &s, &l) == 2 && l > 0) {
      pthread_mutex_lock(&mu);
      armed = 0, holding = 1, fault_start = s, fault_length = l;
      pthread_mutex_unlock(&mu);
    } else if (strncmp(cmd, "let go", 6) == 0) {
      pthread_mutex_lock(&mu);
      holding = 0;
      pthread_cond_broadcast(&let_go);
      pthread_mutex_unlock(&mu);
    } else {
      return -EINVAL;
    }
    return (int)size;
  }
  if (node_of(path) != DISK) return -ENOENT;
  if ((uint64_t)off + size > (uint64_t)image_size) return -ENOSPC;
  size_t put = 0;
  while (put < size) {
    ssize_t r = pwrite(image_fd, buf + put, size - put, off + (off_t)put);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    put += (size_t)r;
  }
  return (int)size;
}

static int fd_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  (void)fi;
  enum node n = node_of(path);
  if (n == CTL) return 0;
  if (n == DISK) return size == image_size ? 0 : -EPERM;
  return -ENOENT;
}

static int fd_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  (void)datasync, (void)fi;
  return node_of(path) == DISK ? (fdatasync(image_fd) == 0 ? 0 : -errno) : 0;
}

static const struct fuse_operations ops = {
  .init = fd_init,
  .getattr = fd_getattr,
  .readdir = fd_readdir,
  .open = fd_open,
  .read = fd_read,
  .write = fd_write,
  .truncate = fd_truncate,
  .fsync = fd_fsync,
};

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s IMAGE MOUNTPOINT\n", argv[0]);
    return 2;
  }
  // The test that started us may die without its cleanup: end (and unmount) with it.
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) return 1;
  image_fd = open(argv[1], O_RDWR | O_CLOEXEC);
  struct stat st;
  if (image_fd < 0 || fstat(image_fd, &st) != 0) {
    perror(argv[1]);
    return 1;
  }
  image_size = st.st_size;
  char *fargs[] = {argv[0], "-f", "-o", "fsname=faulty-disk,subtype=faulty-disk", argv[2], NULL};
  return fuse_main(5, fargs, &ops, NULL);
}
