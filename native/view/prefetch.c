// Prefetch: the view stores the data of the small files a reader will open next in the kernel's page
// cache (FUSE_NOTIFY_STORE), before the reader opens them.
//
// Why: a native filesystem learns which file comes next when it is opened, and pays a device round
// trip per small file. The view knows every file's extents, and a backup reads a directory in the
// order it was listed. So a listing (readdirplus) starts a job for that directory, and prefetch
// threads read its files' data ahead: neighbouring extents coalesced into one device read of up to
// PF_READ_MAX, PF_THREADS reads in flight. An open then finds the file's pages cached, and the read
// costs no request (docs/native-engine.md, "Prefetch", has the figures that chose the numbers here).
//
// Bounded: what was prefetched and not yet opened is at most the window (bytes, each file rounded up
// to whole pages). An open of a prefetched file retires it and every file prefetched before it (the
// reader passed them); PF_MISS_FLUSH opens in a row of files not prefetched retire everything (the
// reader went elsewhere). A listing takes nothing while no file was opened for a second: a reader
// that lists directories and opens nothing (an indexer) costs no I/O, one that opens a file now and
// then at most one window. The threads' buffers are fixed (PF_THREADS x PF_READ_MAX).
//
// Which files: regular files of at most PF_FILE_MAX bytes (push-ahead and readahead serve larger
// ones) that are not tainted. A directory's listing that the kernel answers from its own cache
// reaches no one here: a read request at the start of a file not taken (its pages were not cached;
// an open alone says nothing: its pages may be), in a directory with no job, starts one after the
// file; in a directory whose job lags behind the reader, the job skips to after it.
//
// Safety: a prefetch is a read the reader did not ask for yet, with the guarantees push-ahead gives
// (push.c): the lease is checked before each device read (never asking JS); a failed device read
// stores nothing of it, silently, so the reader's own read fails and is logged; each file resolves
// through one map loaded once and is marked served, so a delta racing it taints it; a delta ends the
// prefetch of its files and waits (bounded) for reads in flight (xt_prefetch_settle) before it drops
// their pages, and a store that lands after a delta changed the map is dropped by its own thread.
#include "engine.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PF_THREADS 8                          // device reads in flight
#define PF_READ_MAX ((uint64_t)1 << 20)       // bytes per device read (the session's request size)
#define PF_GAP ((uint64_t)64 << 10)           // a gap this small between two files is read through
#define PF_FILE_MAX ((uint64_t)1 << 20)       // larger files: readahead, push-ahead
#define PF_JOBS 8                             // directories prefetched at once (the last listed or read in)
#define PF_MISS_FLUSH 32                      // opens in a row of files not prefetched: the reader went elsewhere
#define PF_WINDOW ((uint64_t)32 << 20)        // the default window, or 1/64 of memory if less
#define PF_SCAN_MAX 65536                     // an open finds its place only in directories this small
#define PF_BEHIND 64                          // how far a job may lag the reader and still catch up
#define PF_IDLE_NS 1000000000LL               // no open for this long: listings are an indexer's, take nothing
#define PAGE ((uint64_t)4096)
#define PF_SETTLE_S 1 // how long a delta waits for a device read in flight

// One directory being prefetched: dirents [next, listed) may go ahead of the reader. `listed`
// follows the listing: a file the kernel has not been told of yet has no inode there to store into.
// A job whose files were all taken stays (done) until its slot is needed, so that opens in that
// directory do not start it again.
struct pf_job {
  int live, done;
  uint32_t dir;    // inode index
  uint32_t next;   // next dirent (of the directory's) to consider
  uint32_t listed; // dirents the kernel has been given so far
};

struct pf_worker {
  pthread_t thread;
  struct engine *e;
  uint8_t *buf; // PF_READ_MAX + PAGE, aligned for O_DIRECT
  int busy;     // a unit is being read or stored (under mu)
  struct xt_pf_unit unit;
};

// Files prefetched and not yet retired, in the order they were taken: a ring of inode indexes and
// their sizes in pages. It holds at most window / PAGE entries, since every file counts one page at least.
struct xt_prefetch {
  pthread_mutex_t mu;
  pthread_cond_t work, idle;
  int stopping;
  uint64_t window;  // bytes; 0: off
  uint64_t pending; // bytes taken and not retired (in flight included)
  uint32_t *ring_index, *ring_pages, ring_cap, head, count;
  unsigned misses, rr;
  unsigned sleeping, settling; // threads waiting for work; deltas waiting for reads in flight
  int64_t opened_at;           // CLOCK_MONOTONIC ns of the last open of a file
  struct pf_job jobs[PF_JOBS];
  unsigned n_workers;
  struct pf_worker workers[PF_THREADS];
  _Atomic uint64_t stored_files, stored_bytes, failed_reads; // since mount (xt_prefetch_stats)
};

static uint64_t pages_of(uint64_t size) {
  return (size + PAGE - 1) / PAGE;
}

// ------------------------------------------------------------------------------- the window

// Retire the oldest `k` entries. Under mu.
static void retire(struct xt_prefetch *p, uint32_t k) {
  for (uint32_t i = 0; i < k; i++) {
    p->pending -= (uint64_t)p->ring_pages[p->head] * PAGE;
    p->head = (p->head + 1) % p->ring_cap;
  }
  p->count -= k;
}

// The position of `index` in the ring, oldest first, or -1. Under mu.
static int64_t ring_find(const struct xt_prefetch *p, uint32_t index) {
  for (uint32_t i = 0; i < p->count; i++)
    if (p->ring_index[(p->head + i) % p->ring_cap] == index) return i;
  return -1;
}

// Take a file of `size` bytes into the window; 0 when it does not fit. Under mu.
static int take(struct xt_prefetch *p, uint32_t index, uint64_t size) {
  uint64_t pages = pages_of(size) > 0 ? pages_of(size) : 1;
  if (p->pending + pages * PAGE > p->window) return 0; // and so count < ring_cap
  uint32_t at = (p->head + p->count) % p->ring_cap;
  p->ring_index[at] = index;
  p->ring_pages[at] = (uint32_t)pages;
  p->count++;
  p->pending += pages * PAGE;
  return 1;
}

// ------------------------------------------------------------------------------------- jobs

static struct pf_job *job_of(struct xt_prefetch *p, uint32_t dir) {
  for (unsigned k = 0; k < PF_JOBS; k++)
    if (p->jobs[k].live && p->jobs[k].dir == dir) return &p->jobs[k];
  return NULL;
}

// A slot for a new job: a free one, else a done one, else the one the round robin would pick last.
static struct pf_job *new_job(struct xt_prefetch *p, uint32_t dir, uint32_t next, uint32_t listed) {
  struct pf_job *j = NULL;
  for (unsigned k = 0; k < PF_JOBS && j == NULL; k++)
    if (!p->jobs[k].live) j = &p->jobs[k];
  for (unsigned k = 0; k < PF_JOBS && j == NULL; k++)
    if (p->jobs[k].done) j = &p->jobs[k];
  if (j == NULL) j = &p->jobs[(p->rr + PF_JOBS - 1) % PF_JOBS];
  *j = (struct pf_job){.live = 1, .dir = dir, .next = next, .listed = listed};
  return j;
}

static int tainted(struct engine *e, uint32_t index) {
  struct xt_map *m = xt_map_of(e, index);
  return m != NULL && atomic_load(&m->tainted);
}

// A file prefetch would take: shown (a shard view's), small, regular, not empty, not tainted. Whether its pages are cached
// already is the kernel's to know: a file read before is read again (the cache may have dropped it).
static int wanted(struct engine *e, uint32_t index) {
  const struct xt_inode *n = &e->t.inodes[index];
  return xt_visible(e, index) && S_ISREG(n->mode) && n->size > 0 && n->size <= PF_FILE_MAX && !tainted(e, index);
}

// How file `index` would be prefetched, planned through map `m`: XT_PF_SPAN with its device and
// device offset when its bytes are one plain device range, XT_PF_INLINE, or XT_PF_SLOW (holes, several
// extents, checksums, compression: the read path's own code).
static enum xt_pf_kind kind_of(struct engine *e, uint32_t index, struct xt_map *m, uint32_t *device, uint64_t *offset) {
  const struct xt_inode *n = &e->t.inodes[index];
  if (n->flags & XT_INLINE) return XT_PF_INLINE;
  struct xt_plan plan;
  struct xt_piece piece, more;
  xt_plan_through(&plan, &e->t, n, m, 0, n->size);
  if (!xt_plan_next(&plan, &piece) || xt_plan_next(&plan, &more)) return XT_PF_SLOW;
  if (piece.zero || (piece.x->flags & (XT_EXT_CSUM | XT_EXT_COMPRESSED)) != 0) return XT_PF_SLOW;
  *device = piece.device;
  *offset = piece.device_offset;
  return XT_PF_SPAN;
}

// Whether a file at device range [from, to) joins unit u: same device, and the read stays within
// PF_READ_MAX with no gap over PF_GAP.
static int joins(const struct xt_pf_unit *u, uint32_t device, uint64_t from, uint64_t to) {
  if (u->start == u->end) return 1;
  if (device != u->device || from > u->end + PF_GAP || to + PF_GAP < u->start) return 0;
  uint64_t start = from < u->start ? from : u->start, end = to > u->end ? to : u->end;
  return end - start <= PF_READ_MAX;
}

// Fill `u` from job j's next files; 1 when it holds any. Under mu.
static int fill_unit(struct engine *e, struct xt_prefetch *p, struct pf_job *j, struct xt_pf_unit *u) {
  const struct xt_inode *dir = &e->t.inodes[j->dir];
  u->n = u->device = 0;
  u->start = u->end = u->need = 0;
  while (j->next < j->listed && u->n < XT_PF_UNIT_FILES) {
    uint32_t index = e->t.dirents[dir->first + j->next].child;
    const struct xt_inode *n = &e->t.inodes[index];
    if (!wanted(e, index)) {
      j->next++;
      continue;
    }
    struct xt_map *m = xt_map_of(e, index);
    uint32_t device = 0;
    uint64_t offset = 0;
    enum xt_pf_kind kind = kind_of(e, index, m, &device, &offset);
    if (kind == XT_PF_SLOW && u->n > 0) break; // a unit of its own
    uint64_t from = offset & ~(PAGE - 1), to = (offset + n->size + PAGE - 1) & ~(PAGE - 1);
    if (kind == XT_PF_SPAN && !joins(u, device, from, to)) break;
    if (!take(p, index, n->size)) break; // the window is full: the reader must open some first
    j->next++;
    struct xt_pf_file *f = &u->files[u->n++];
    *f = (struct xt_pf_file){.index = index, .kind = kind, .size = n->size, .at = offset, .map = m};
    if (kind == XT_PF_SLOW) break;
    if (kind != XT_PF_SPAN) continue;
    if (u->start == u->end) u->device = device, u->start = from, u->end = to;
    if (from < u->start) u->start = from;
    if (to > u->end) u->end = to;
    if (offset + n->size > u->need) u->need = offset + n->size; // an absolute end until the unit is done
  }
  if (u->start != u->end) {
    u->need -= u->start;
    for (uint32_t k = 0; k < u->n; k++)
      if (u->files[k].kind == XT_PF_SPAN) u->files[k].at -= u->start;
  }
  if (j->next >= e->t.inodes[j->dir].count) j->done = 1; // every file taken
  return u->n > 0;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// A job with files to take, round robin, filled into `u`; 0 when none, or when no file was opened
// for PF_IDLE_NS: a reader that only lists (find, du, an indexer) costs no I/O. Under mu.
static int pick(struct engine *e, struct xt_prefetch *p, struct xt_pf_unit *u) {
  if (now_ns() - p->opened_at > PF_IDLE_NS) return 0;
  for (unsigned k = 0; k < PF_JOBS; k++) {
    struct pf_job *j = &p->jobs[(p->rr + k) % PF_JOBS];
    if (!j->live || j->done || j->next >= j->listed) continue;
    if (fill_unit(e, p, j, u)) {
      p->rr = (p->rr + k + 1) % PF_JOBS;
      return 1;
    }
    if (p->pending + PAGE > p->window) return 0; // full: nothing else fits either
  }
  return 0;
}

// ------------------------------------------------------------------------------------- the I/O

static void store(struct engine *e, const struct xt_pf_file *f, const uint8_t *data) {
  xt_note_served(e, f->index, f->map, 0); // served, with no bytes counted as re-read (push.c's rule)
  struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)f->size);
  bv.buf[0].mem = (void *)data;
  // Up to EOF exactly: the kernel zeroes the rest of the last page and marks it up to date. ENOENT
  // (the kernel forgot the inode) stores nothing.
  if (fuse_lowlevel_notify_store(e->se, (fuse_ino_t)f->index + 1, 0, &bv, 0) == 0) {
    atomic_fetch_add_explicit(&e->prefetch->stored_files, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&e->prefetch->stored_bytes, f->size, memory_order_relaxed);
  }
  if (xt_map_of(e, f->index) != f->map) // a delta came: its drop may have run before this store landed
    fuse_lowlevel_notify_inval_inode(e->se, (fuse_ino_t)f->index + 1, 0, 0);
}

static void run_unit(struct engine *e, struct pf_worker *w) {
  struct xt_pf_unit *u = &w->unit;
  if (!xt_lease_fresh(e)) return;
  int span_ok = 0;
  if (u->start != u->end) {
    const struct xt_device *devs = atomic_load_explicit(&e->devs, memory_order_acquire)->d;
    span_ok = xt_read_aligned(&devs[u->device], w->buf, u->start, (size_t)(u->end - u->start), (size_t)u->need) == 0;
    if (!span_ok) atomic_fetch_add_explicit(&e->prefetch->failed_reads, 1, memory_order_relaxed);
  }
  for (uint32_t k = 0; k < u->n; k++) {
    const struct xt_pf_file *f = &u->files[k];
    const uint8_t *data = NULL;
    if (f->kind == XT_PF_INLINE) data = (const uint8_t *)e->t.data + e->t.inodes[f->index].first;
    else if (f->kind == XT_PF_SPAN && span_ok) data = w->buf + f->at;
    else if (f->kind == XT_PF_SLOW && xt_read_into(e, f->index, f->map, 0, f->size, &data, 0) != 0)
      data = NULL, atomic_fetch_add_explicit(&e->prefetch->failed_reads, 1, memory_order_relaxed);
    if (data != NULL) store(e, f, data);
  }
}

// One sleeping thread, if any, looks for work. Threads wake each other one at a time (a thread that
// took a unit wakes the next while there is room), never all at once: on every open that would cost
// more than the prefetch saves. Under mu.
static void wake(struct xt_prefetch *p) {
  if (p->sleeping > 0) pthread_cond_signal(&p->work);
}

static void *prefetch_main(void *arg) {
  struct pf_worker *w = arg;
  struct engine *e = w->e;
  struct xt_prefetch *p = e->prefetch;
  pthread_mutex_lock(&p->mu);
  while (!p->stopping) {
    if (!pick(e, p, &w->unit)) {
      p->sleeping++;
      pthread_cond_wait(&p->work, &p->mu);
      p->sleeping--;
      continue;
    }
    if (p->pending + PAGE <= p->window) wake(p); // room for more: the next unit goes to another thread
    w->busy = 1;
    pthread_mutex_unlock(&p->mu);
    run_unit(e, w);
    pthread_mutex_lock(&p->mu);
    w->busy = 0;
    if (p->settling > 0) pthread_cond_broadcast(&p->idle);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

// ------------------------------------------------------------------------------ the interface

static uint64_t default_window(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t memory = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
  uint64_t w = PF_WINDOW < memory / 64 ? PF_WINDOW : memory / 64;
  return w & ~(PAGE - 1);
}

void xt_prefetch_start(struct engine *e) {
  struct xt_prefetch *p = calloc(1, sizeof *p);
  if (p == NULL) return; // no prefetch: reads serve as before
  p->window = e->prefetch_window < 0 ? default_window() : (uint64_t)e->prefetch_window & ~(PAGE - 1);
  if (p->window == 0) return free(p); // off: reads serve as before
  p->ring_cap = (uint32_t)(p->window / PAGE); // the window in files of one page: 8 bytes a page of it
  p->ring_index = malloc(p->ring_cap * sizeof *p->ring_index);
  p->ring_pages = malloc(p->ring_cap * sizeof *p->ring_pages);
  if (p->ring_index == NULL || p->ring_pages == NULL) return free(p->ring_index), free(p->ring_pages), free(p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  pthread_cond_init(&p->idle, NULL);
  e->prefetch = p;
  for (unsigned i = 0; i < PF_THREADS; i++) {
    struct pf_worker *w = &p->workers[p->n_workers];
    void *buf;
    if (posix_memalign(&buf, PAGE, PF_READ_MAX + PAGE) != 0) break;
    *w = (struct pf_worker){.e = e, .buf = buf};
    if (pthread_create(&w->thread, NULL, prefetch_main, w) != 0) {
      free(buf);
      break;
    }
    p->n_workers++;
  }
  if (p->n_workers == 0) xt_prefetch_free(e);
}

void xt_prefetch_stop(struct engine *e) {
  struct xt_prefetch *p = e->prefetch;
  if (p == NULL) return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&p->mu);
  for (unsigned i = 0; i < p->n_workers; i++) pthread_join(p->workers[i].thread, NULL);
}

void xt_prefetch_free(struct engine *e) {
  struct xt_prefetch *p = e->prefetch;
  if (p == NULL) return;
  for (unsigned i = 0; i < p->n_workers; i++) free(p->workers[i].buf);
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->idle);
  pthread_mutex_destroy(&p->mu);
  free(p->ring_index);
  free(p->ring_pages);
  e->prefetch = NULL;
  free(p);
}

void xt_prefetch_listed(struct engine *e, uint32_t dir, uint64_t from, uint64_t to) {
  struct xt_prefetch *p = e->prefetch;
  // Positions 0 and 1 are "." and "..": dirent k is position k + 2.
  uint32_t listed = to > 2 ? (uint32_t)(to - 2) : 0;
  if (p == NULL || listed == 0) return;
  pthread_mutex_lock(&p->mu);
  struct pf_job *j = job_of(p, dir);
  if (from == 0 && !p->stopping && (j == NULL || j->done)) j = new_job(p, dir, 0, listed); // listed again: a new pass
  if (j != NULL && listed > j->listed) j->listed = listed;
  if (j != NULL) wake(p);
  pthread_mutex_unlock(&p->mu);
}

// The position of `index` among directory `dir`'s entries, or the entry count when it is not one.
static uint32_t position_in(const struct engine *e, uint32_t dir, uint32_t index) {
  const struct xt_inode *d = &e->t.inodes[dir];
  for (uint32_t k = 0; k < d->count; k++)
    if (e->t.dirents[d->first + k].child == index) return k;
  return d->count;
}

// The reader asked to read `index`, a file prefetch wanted and had not taken: its pages were not
// cached. If its directory's job is behind, it skips to after the file; if the directory has none
// (its listing came from the kernel's cache) or it was done (a new pass), one starts after the file.
// Under mu.
static void follow(struct engine *e, struct xt_prefetch *p, uint32_t index) {
  uint32_t dir = e->t.inodes[index].parent;
  const struct xt_inode *d = &e->t.inodes[dir];
  struct pf_job *j = job_of(p, dir);
  if (j != NULL && !j->done) {
    for (uint32_t k = j->next; k < j->listed && k < j->next + PF_BEHIND; k++)
      if (e->t.dirents[d->first + k].child == index) return (void)(j->next = k + 1);
    return;
  }
  if (!S_ISDIR(d->mode) || d->count > PF_SCAN_MAX) return;
  uint32_t pos = position_in(e, dir, index);
  if (pos < d->count) new_job(p, dir, pos + 1, d->count), wake(p);
}

void xt_prefetch_open(struct engine *e, uint32_t index) {
  struct xt_prefetch *p = e->prefetch;
  if (p == NULL) return;
  pthread_mutex_lock(&p->mu);
  int64_t now = now_ns(), at = ring_find(p, index);
  int dormant = now - p->opened_at > PF_IDLE_NS;
  p->opened_at = now;
  uint64_t room = p->window - p->pending;
  if (at >= 0) {
    retire(p, (uint32_t)at + 1); // this one, and those the reader passed
    p->misses = 0;
  } else if (++p->misses >= PF_MISS_FLUSH) {
    retire(p, p->count); // the reader went elsewhere: what was taken for it counts no more
    p->misses = 0;
  }
  // Wake a thread when the room crosses a unit's worth (or a quarter window), not on every open.
  uint64_t low = p->window / 4 < PF_READ_MAX ? p->window / 4 : PF_READ_MAX;
  if (dormant || (room < low && p->window - p->pending >= low)) wake(p);
  pthread_mutex_unlock(&p->mu);
}

void xt_prefetch_read(struct engine *e, uint32_t index) {
  struct xt_prefetch *p = e->prefetch;
  if (p == NULL || !wanted(e, index)) return;
  pthread_mutex_lock(&p->mu);
  if (!p->stopping && ring_find(p, index) < 0) follow(e, p, index);
  pthread_mutex_unlock(&p->mu);
}

void xt_prefetch_stats(struct engine *e, struct xt_prefetch_stats *out) {
  struct xt_prefetch *p = e->prefetch;
  *out = (struct xt_prefetch_stats){0};
  if (p == NULL) return;
  pthread_mutex_lock(&p->mu);
  out->window = p->window;
  out->pending = p->pending;
  pthread_mutex_unlock(&p->mu);
  out->stored_files = atomic_load(&p->stored_files);
  out->stored_bytes = atomic_load(&p->stored_bytes);
  out->failed_reads = atomic_load(&p->failed_reads);
}

// Whether a unit in flight holds one of the delta's files. Under mu.
static int busy_with(const struct xt_prefetch *p, const struct xt_delta_file *files, uint32_t n) {
  for (unsigned i = 0; i < p->n_workers; i++) {
    const struct pf_worker *w = &p->workers[i];
    for (uint32_t k = 0; w->busy && k < w->unit.n; k++)
      if (xt_delta_has(files, n, w->unit.files[k].index)) return 1;
  }
  return 0;
}

void xt_prefetch_settle(struct engine *e, const struct xt_delta_file *files, uint32_t n) {
  struct xt_prefetch *p = e->prefetch;
  if (p == NULL) return;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until); // pthread_cond_timedwait's clock
  until.tv_sec += PF_SETTLE_S;
  pthread_mutex_lock(&p->mu);
  // Files not taken yet are planned through the new map when they are; those in flight are waited for.
  p->settling++;
  while (busy_with(p, files, n) && pthread_cond_timedwait(&p->idle, &p->mu, &until) == 0) continue;
  p->settling--;
  pthread_mutex_unlock(&p->mu);
}

int xt_prefetch_plan(const struct xt_tables *t, uint32_t dir, uint64_t window, void (*each)(void *ctx, const struct xt_pf_unit *u), void *ctx) {
  struct engine e = {.t = *t}; // no delta: every file through the tables' extents
  struct xt_prefetch p = {.window = window & ~(PAGE - 1)};
  p.ring_cap = (uint32_t)(p.window / PAGE);
  struct pf_job j = {.live = 1, .dir = dir, .listed = t->inodes[dir].count};
  struct xt_pf_unit *u = malloc(sizeof *u);
  p.ring_index = malloc((p.ring_cap + 1) * sizeof *p.ring_index);
  p.ring_pages = malloc((p.ring_cap + 1) * sizeof *p.ring_pages);
  int err = u == NULL || p.ring_index == NULL || p.ring_pages == NULL ? ENOMEM : 0;
  while (err == 0 && !j.done && fill_unit(&e, &p, &j, u)) each(ctx, u);
  free(u);
  free(p.ring_index);
  free(p.ring_pages);
  return err;
}
