// Push-ahead: the view stores a sequential reader's next bytes in the kernel's page cache itself
// (FUSE_NOTIFY_STORE), from its own threads, before the reader asks.
//
// Why: with plain readahead the reader's own thread allocates and inserts every page of the FUSE
// page cache, one 4 KiB page at a time (FUSE has no large folios on this kernel), and then waits for
// the reply. tar is CPU-bound on that; a native ext4 mount does the same work in large folios. A
// store moves the allocation and the copy to a pusher thread on another core, and the reader finds
// its pages cached (docs/native-engine.md, "Push-ahead", has the figures).
//
// When: a read at offset 0 of a regular file of at least PUSH_MIN_SIZE starts a job for that inode
// (at most PUSH_JOBS at once; otherwise readahead serves as before). A job pushes up to the window
// past the furthest read request seen, and leaves out one page halfway (the trip page): the
// reader's miss there is the request that tells us where it is, and moves the window on. So what a
// reader has not consumed is bounded by the window per job, and a reader that stops reading costs at
// most that much I/O. The job ends when the open file that started it is released (other opens of
// the same inode, a `fincore` say, leave it alone; their reads move the window too), or on any failure.
//
// Safety: a push is a read the reader did not ask for yet, with the same guarantees as a read:
// - the lease is checked before each chunk (a push never asks JS; an expired lease just stops it);
// - a failed device read stops the job silently: the reader's own read of those bytes then fails,
//   loudly, as before;
// - it resolves through one map loaded once, and notes the inode as served, so a delta racing it
//   taints the file (delta.c). Pushed bytes never count as re-read: a tainted file is not pushed,
//   so only the reader's own requests can clear the taint;
// - a delta drops a replaced file's pages after installing its map (delta.c), and a store of the old
//   map's bytes must not land after that drop. So the delta first ends the jobs of the files it
//   replaces and waits for their chunks in flight (xt_push_settle). The wait is bounded (a store
//   can wait on a page whose read waits on JS, the very thread the delta runs on); past the bound
//   the pusher's own check after storing drops what it stored. Either way the file was read before
//   the delta, so the delta taints it. engine-delta's push test fails with neither guard
//   (docs/native-engine.md).
#include "engine.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// One pusher: more take the core the reader needs. A window large enough that the reader does not catch
// up with the pusher and fall back on readahead; it shrinks on hosts under 8 GiB. The measurements
// that chose both are in docs/native-engine.md ("Push-ahead").
#define PUSH_THREADS 1
#define PUSH_JOBS 4                       // files pushed at once: at most 1 GiB not yet read
#define PUSH_CHUNK ((uint64_t)1 << 20)    // bytes per store
#define PUSH_AHEAD_MAX ((uint64_t)256 << 20) // bytes past the furthest read request, at most
#define PUSH_MIN_SIZE ((uint64_t)4 << 20) // smaller files: readahead's first window covers most
#define PAGE ((uint64_t)4096)
#define PUSH_SETTLE_S 1 // how long a delta waits for a chunk in flight

struct push_job {
  int live, stop;
  unsigned busy;   // chunks being pushed
  uint32_t index;  // inode index
  uint64_t owner;  // the open file (fh) whose read started the job: its release ends it
  uint64_t size;   // file size
  uint64_t seen;   // end of the furthest read request
  uint64_t next;   // next byte to push
  uint64_t target; // push up to here (exclusive)
  uint64_t trip;   // the page left for the reader
};

struct xt_push {
  uint64_t ahead; // the window: PUSH_AHEAD_MAX, or 1/32 of memory if less (all jobs: 1/8)
  pthread_mutex_t mu;
  pthread_cond_t work, idle; // idle: a chunk finished
  int stopping;
  unsigned n_threads, rr;
  pthread_t threads[PUSH_THREADS];
  struct push_job jobs[PUSH_JOBS];
};

static uint64_t min_u64(uint64_t a, uint64_t b) {
  return a < b ? a : b;
}

// A read request ended at `end`: move the window on if it is the furthest yet.
static int saw_read(struct push_job *j, uint64_t ahead, uint64_t end) {
  if (end <= j->seen) return 0;
  j->seen = end;
  j->target = min_u64(j->size, end + ahead);
  j->trip = (end + ahead / 2) & ~(PAGE - 1);
  if (j->next < end) j->next = end; // never push what the reader has asked for already
  return 1;
}

// Stop pushing; the slot frees once no chunk of the job is in flight. Under mu.
static void end_job(struct push_job *j) {
  j->stop = 1;
  if (j->busy == 0) j->live = 0;
}

static int tainted(struct engine *e, uint32_t index) {
  struct xt_map *m = xt_map_of(e, index);
  return m != NULL && atomic_load(&m->tainted);
}

// Push bytes [from, to) of inode `index`; 1 when they are in the page cache, 0 to end the job.
static int push_range(struct engine *e, uint32_t index, uint64_t from, uint64_t to) {
  if (!xt_lease_fresh(e) || tainted(e, index)) return 0;
  struct xt_map *m = xt_map_of(e, index);
  const uint8_t *data;
  if (xt_read_into(e, index, m, from, to, &data, 0) != 0) return 0;
  xt_note_served(e, index, m, 0); // served, but no bytes counted as re-read (see the top)
  struct fuse_bufvec bv = FUSE_BUFVEC_INIT((size_t)(to - from));
  bv.buf[0].mem = (void *)data;
  int err = fuse_lowlevel_notify_store(e->se, (fuse_ino_t)index + 1, (off_t)from, &bv, 0);
  if (xt_map_of(e, index) != m) { // a delta came: its drop may have run before this store landed
    fuse_lowlevel_notify_inval_inode(e->se, (fuse_ino_t)index + 1, (off_t)from, (off_t)(to - from));
    return 0;
  }
  if (err == 0) xt_stats_pushed(e, to - from);
  return err == 0;
}

// A job with bytes to push, round robin; NULL when none. Under mu.
static struct push_job *pick(struct xt_push *p) {
  for (unsigned k = 0; k < PUSH_JOBS; k++) {
    struct push_job *j = &p->jobs[(p->rr + k) % PUSH_JOBS];
    if (j->live && !j->stop && j->next == j->trip) j->next += PAGE;
    if (j->live && !j->stop && j->next < j->target) {
      p->rr = (p->rr + k + 1) % PUSH_JOBS;
      return j;
    }
  }
  return NULL;
}

static void *pusher_main(void *arg) {
  struct engine *e = arg;
  struct xt_push *p = e->push;
  pthread_mutex_lock(&p->mu);
  while (!p->stopping) {
    struct push_job *j = pick(p);
    if (j == NULL) {
      pthread_cond_wait(&p->work, &p->mu);
      continue;
    }
    uint64_t from = j->next, to = min_u64(from + PUSH_CHUNK, j->target);
    if (from < j->trip && to > j->trip) to = j->trip;
    j->next = to;
    j->busy++;
    uint32_t index = j->index;
    pthread_mutex_unlock(&p->mu);
    int ok = push_range(e, index, from, to);
    pthread_mutex_lock(&p->mu);
    j->busy--;
    if (!ok || j->stop) end_job(j);
    pthread_cond_broadcast(&p->idle);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

void xt_push_start(struct engine *e) {
  struct xt_push *p = calloc(1, sizeof *p);
  if (p == NULL) return; // no push-ahead: readahead serves alone
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t memory = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
  p->ahead = min_u64(PUSH_AHEAD_MAX, memory / 32) & ~(PAGE - 1);
  if (p->ahead < 2 * PUSH_CHUNK) return free(p); // a tiny host: readahead alone
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  pthread_cond_init(&p->idle, NULL);
  e->push = p;
  while (p->n_threads < PUSH_THREADS && pthread_create(&p->threads[p->n_threads], NULL, pusher_main, e) == 0) p->n_threads++;
  if (p->n_threads == 0) xt_push_free(e); // no thread: readahead alone
}

void xt_push_stop(struct engine *e) {
  struct xt_push *p = e->push;
  if (p == NULL) return;
  pthread_mutex_lock(&p->mu);
  p->stopping = 1;
  pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&p->mu);
  for (unsigned i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
  p->n_threads = 0;
  pthread_mutex_lock(&p->mu);
  memset(p->jobs, 0, sizeof p->jobs); // no pusher left: nothing for a late xt_push_settle to wait on
  pthread_mutex_unlock(&p->mu);
}

void xt_push_free(struct engine *e) {
  struct xt_push *p = e->push;
  if (p == NULL) return;
  pthread_cond_destroy(&p->work);
  pthread_cond_destroy(&p->idle);
  pthread_mutex_destroy(&p->mu);
  e->push = NULL;
  free(p);
}

void xt_push_read(struct engine *e, uint64_t fh, uint32_t index, uint64_t start, uint64_t end) {
  struct xt_push *p = e->push;
  uint64_t size = e->t.inodes[index].size;
  if (p == NULL || size < PUSH_MIN_SIZE) return;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) return (void)pthread_mutex_unlock(&p->mu);
  struct push_job *j = NULL, *free_slot = NULL;
  for (unsigned k = 0; k < PUSH_JOBS && j == NULL; k++) {
    if (p->jobs[k].live && p->jobs[k].index == index) j = &p->jobs[k];
    else if (!p->jobs[k].live && free_slot == NULL) free_slot = &p->jobs[k];
  }
  if (j == NULL && start == 0 && end < size && free_slot != NULL && !tainted(e, index)) {
    j = free_slot;
    *j = (struct push_job){.live = 1, .index = index, .owner = fh, .size = size, .next = end};
  }
  if (j != NULL && !j->stop && saw_read(j, p->ahead, end)) pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&p->mu);
}

void xt_push_release(struct engine *e, uint64_t fh, uint32_t index) {
  struct xt_push *p = e->push;
  if (p == NULL) return;
  pthread_mutex_lock(&p->mu);
  for (unsigned k = 0; k < PUSH_JOBS; k++) {
    struct push_job *j = &p->jobs[k];
    if (j->live && j->index == index && j->owner == fh) end_job(j);
  }
  pthread_mutex_unlock(&p->mu);
}

void xt_push_settle(struct engine *e, const struct xt_delta_file *files, uint32_t n) {
  struct xt_push *p = e->push;
  if (p == NULL) return;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until); // pthread_cond_timedwait's clock
  until.tv_sec += PUSH_SETTLE_S;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    int busy = 0;
    for (unsigned k = 0; k < PUSH_JOBS; k++) {
      struct push_job *j = &p->jobs[k];
      if (!j->live || !xt_delta_has(files, n, j->index)) continue;
      end_job(j);
      busy |= j->live;
    }
    if (!busy || pthread_cond_timedwait(&p->idle, &p->mu, &until) != 0) break;
  }
  pthread_mutex_unlock(&p->mu);
}
