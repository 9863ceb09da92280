// The config-ID check on every open. JS owns the judgement (ConfigWatch reads and judges the record);
// C owns the cheap hot path: one stat(2) of the record per open, and when its identity (device, inode,
// size, mtime, ctime) equals the stamp of the last "ok", the open is served without leaving C.
// Otherwise the FUSE worker asks JS through a threadsafe function and waits (bounded) for the verdict.
//
// The lease (a mover following `extfs serve`, docs/remap.md): JS sets how long opens and reads may be
// served on what it last heard from the initiator. Once that passed, every open and every read asks
// JS, which renews the lease over the network or refuses. Without a lease (shared storage) it never
// expires; JS also expires it for good when the image is released, so reads of open files stop too.
//
// Only "ok" is cached. A refusal goes back to JS every time: refusals are rare and each is logged
// anyway, and JS then also retries a record it could not read (a transient error on shared storage
// must not refuse opens until the record happens to change).
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// One question to JS, shared by the waiting worker and the JS callback; whoever lets go last frees it
// (the worker may give up after XT_JUDGE_TIMEOUT_S while the question is still queued).
struct judge_call {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs, done, ok;
  char reason[sizeof(((struct xt_event *)0)->reason)];
};

static void call_release(struct judge_call *c) {
  pthread_mutex_lock(&c->mu);
  int last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (!last) return;
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c);
}

static void call_answer(struct judge_call *c, int ok, const char *reason) {
  pthread_mutex_lock(&c->mu);
  c->ok = ok;
  snprintf(c->reason, sizeof c->reason, "%s", reason);
  c->done = 1;
  pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->mu);
  call_release(c);
}

// The `answer` function handed to judge(): its data. `c` is NULL once answered, so a second call
// does nothing; freed when JS lets go of the function (a question never answered is refused then).
struct judge_ticket {
  struct judge_call *c;
};

static void ticket_answer(struct judge_ticket *t, int ok, const char *reason) {
  struct judge_call *c = t->c;
  if (c == NULL) return;
  t->c = NULL;
  call_answer(c, ok, reason);
}

// answer(ok: boolean, reason?: string), on the JS thread, now or later.
static napi_value answer_js(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  void *data;
  bool ok = false;
  char reason[sizeof(((struct judge_call *)0)->reason)] = "the serving process refused without a reason";
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data) != napi_ok) return NULL;
  if (argc >= 1 && napi_get_value_bool(env, argv[0], &ok) != napi_ok) ok = false;
  if (!ok && argc >= 2) napi_get_value_string_utf8(env, argv[1], reason, sizeof reason, NULL); // keeps the default if not a string
  ticket_answer(data, ok, reason);
  return NULL;
}

static void ticket_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  ticket_answer(data, 0, "the serving process dropped the config-ID question");
  free(data);
}

// On the JS thread: judge(answer). JS answers through `answer` at once or later (a lease renewed
// over the network); `c` gets exactly one answer either way.
static void pose(napi_env env, napi_value judge, struct judge_call *c) {
  struct judge_ticket *t = malloc(sizeof *t);
  napi_value answer, undefined, result;
  if (t == NULL) return call_answer(c, 0, "out of memory");
  t->c = c;
  if (napi_create_function(env, "answer", NAPI_AUTO_LENGTH, answer_js, t, &answer) != napi_ok) {
    free(t);
    return call_answer(c, 0, "out of memory");
  }
  if (napi_add_finalizer(env, answer, t, ticket_finalize, NULL, NULL) != napi_ok) {
    ticket_answer(t, 0, "out of memory");
    return; // t stays reachable from the function; a few bytes, only when N-API itself fails
  }
  if (napi_get_undefined(env, &undefined) != napi_ok || napi_call_function(env, undefined, judge, 1, &answer, &result) != napi_ok) {
    napi_value exc; // judge() threw: clear it so it does not surface at some unrelated place
    napi_get_and_clear_last_exception(env, &exc);
    ticket_answer(t, 0, "the serving process could not judge the config-ID record");
  }
}

// The call_js of the `judge` function. env is NULL when the function is being torn down; the
// worker is then answered "not ok" rather than left waiting.
void xt_judge_js(napi_env env, napi_value fn, void *context, void *data) {
  (void)context;
  if (env == NULL) return call_answer(data, 0, "the view is shutting down");
  pose(env, fn, data);
}

static struct judge_call *call_new(int refs) {
  struct judge_call *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);
  c->refs = refs;
  return c;
}

static void stamp_of(const struct stat *st, struct cfg_stamp *s) {
  *s = (struct cfg_stamp){.dev = st->st_dev, .ino = st->st_ino, .size = st->st_size, .mtim = st->st_mtim, .ctim = st->st_ctim};
}

static int stamp_eq(const struct cfg_stamp *a, const struct cfg_stamp *b) {
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtim.tv_sec == b->mtim.tv_sec &&
         a->mtim.tv_nsec == b->mtim.tv_nsec && a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

int xt_config_init(struct engine *e, const char *record_path) {
  if ((e->record_path = strdup(record_path)) == NULL) return ENOMEM;
  return pthread_mutex_init(&e->cfg_mu, NULL);
}

void xt_config_destroy(struct engine *e) {
  pthread_mutex_destroy(&e->cfg_mu);
  free(e->record_path);
}

// Ask JS and wait; returns the verdict, with the reason of a refusal in `reason`.
static int ask_js(struct engine *e, char *reason, size_t reason_len) {
  struct judge_call *c = call_new(2); // this worker, and the answer
  if (c == NULL) return snprintf(reason, reason_len, "out of memory"), 0;
  if (xt_call_js(e, e->judge, c, napi_tsfn_blocking) != napi_ok) {
    c->refs = 1;
    call_release(c);
    return snprintf(reason, reason_len, "the view is shutting down"), 0;
  }
  struct timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += XT_JUDGE_TIMEOUT_S;
  pthread_mutex_lock(&c->mu);
  while (!c->done && pthread_cond_timedwait(&c->cv, &c->mu, &deadline) != ETIMEDOUT) {
  }
  int ok = c->done && c->ok;
  if (c->done) snprintf(reason, reason_len, "%s", c->reason);
  else snprintf(reason, reason_len, "config-ID check timed out: the serving process did not answer within %d s", XT_JUDGE_TIMEOUT_S);
  pthread_mutex_unlock(&c->mu);
  call_release(c);
  return ok;
}

static void cache_ok(struct engine *e, const struct cfg_stamp *s) {
  pthread_mutex_lock(&e->cfg_mu);
  e->cfg_stamp = *s;
  e->cfg_ok = 1;
  pthread_mutex_unlock(&e->cfg_mu);
}

void xt_config_prime(napi_env env, struct engine *e, napi_value judge) {
  struct stat st;
  struct cfg_stamp now;
  struct judge_call *c;
  if (stat(e->record_path, &st) != 0 || (c = call_new(2)) == NULL) return;
  stamp_of(&st, &now);
  pose(env, judge, c); // an answer that comes only later is not waited for: the first open asks again
  pthread_mutex_lock(&c->mu);
  int ok = c->done && c->ok;
  pthread_mutex_unlock(&c->mu);
  call_release(c);
  if (ok) cache_ok(e, &now);
}

// ------------------------------------------------------------------------------------ lease

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void xt_lease_set(struct engine *e, int64_t ms) {
  int64_t until = ms < 0 ? INT64_MAX : now_ns() + ms * 1000000;
  atomic_store_explicit(&e->lease_until_ns, until, memory_order_release);
}

int xt_lease_fresh(struct engine *e) {
  int64_t until = atomic_load_explicit(&e->lease_until_ns, memory_order_acquire);
  return until == INT64_MAX || now_ns() < until;
}

int xt_read_check(struct engine *e, uint32_t index, uint64_t offset) {
  if (xt_lease_fresh(e)) return 0;
  struct xt_event ev = {.kind = XT_EV_READ_REFUSED, .index = index, .offset = offset};
  if (ask_js(e, ev.reason, sizeof ev.reason)) return 0;
  xt_post_event(e, &ev);
  return ESTALE;
}

int xt_config_check(struct engine *e, uint32_t index) {
  struct stat st;
  struct cfg_stamp now;
  int have = stat(e->record_path, &st) == 0;
  if (have && xt_lease_fresh(e)) {
    stamp_of(&st, &now);
    pthread_mutex_lock(&e->cfg_mu);
    int hit = e->cfg_ok && stamp_eq(&now, &e->cfg_stamp);
    pthread_mutex_unlock(&e->cfg_mu);
    if (hit) return 0;
  }
  struct xt_event ev = {.kind = XT_EV_OPEN_REFUSED, .index = index};
  if (ask_js(e, ev.reason, sizeof ev.reason)) {
    // Cached against the stamp seen before asking: if the record changed meanwhile, the next open
    // sees a new stamp and asks again, so a stale "ok" cannot outlive the change. The cache is
    // used only while the lease is fresh: an expired one sends every open to JS.
    if (have) {
      stamp_of(&st, &now);
      cache_ok(e, &now);
    }
    return 0;
  }
  xt_post_event(e, &ev);
  return ESTALE;
}
