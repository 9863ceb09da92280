// The config-ID check on every open. JS owns the judgement (ConfigWatch reads and judges the record);
// C owns the cheap hot path: one stat(2) of the record per open, and when its identity (device, inode,
// size, mtime, ctime) equals the stamp of the last "ok", the open is served without leaving C.
// Otherwise the FUSE worker asks JS through a threadsafe function and waits (bounded) for the verdict.
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

// On the JS thread: call judge() → {ok: boolean, reason?: string}; the reason of a refusal in `reason`.
static int judge_now(napi_env env, napi_value fn, char *reason, size_t reason_len) {
  bool ok = false;
  napi_value undefined, result, v;
  snprintf(reason, reason_len, "the serving process could not judge the config-ID record");
  if (napi_get_undefined(env, &undefined) == napi_ok && napi_call_function(env, undefined, fn, 0, NULL, &result) == napi_ok) {
    if (napi_get_named_property(env, result, "ok", &v) != napi_ok || napi_get_value_bool(env, v, &ok) != napi_ok) ok = false;
    if (!ok && napi_get_named_property(env, result, "reason", &v) == napi_ok)
      napi_get_value_string_utf8(env, v, reason, reason_len, NULL); // leaves the default if not a string
  } else {
    napi_value exc; // judge() threw: clear it so it does not surface at some unrelated place
    napi_get_and_clear_last_exception(env, &exc);
  }
  return ok;
}

// The call_js of the `judge` function. env is NULL when the function is being torn down; the
// worker is then answered "not ok" rather than left waiting.
void xt_judge_js(napi_env env, napi_value fn, void *context, void *data) {
  (void)context;
  struct judge_call *c = data;
  char reason[sizeof c->reason] = "the view is shutting down";
  int ok = env != NULL && judge_now(env, fn, reason, sizeof reason);
  call_answer(c, ok, reason);
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
  struct judge_call *c = calloc(1, sizeof *c);
  if (c == NULL) return snprintf(reason, reason_len, "out of memory"), 0;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);
  c->refs = 2; // this worker, and the JS callback
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
  char reason[sizeof ((struct judge_call *)0)->reason];
  if (stat(e->record_path, &st) != 0) return;
  stamp_of(&st, &now);
  if (judge_now(env, judge, reason, sizeof reason)) cache_ok(e, &now);
}

int xt_config_check(struct engine *e, uint32_t index) {
  struct stat st;
  struct cfg_stamp now;
  int have = stat(e->record_path, &st) == 0;
  if (have) {
    stamp_of(&st, &now);
    pthread_mutex_lock(&e->cfg_mu);
    int hit = e->cfg_ok && stamp_eq(&now, &e->cfg_stamp);
    pthread_mutex_unlock(&e->cfg_mu);
    if (hit) return 0;
  }
  struct xt_event ev = {.kind = XT_EV_OPEN_REFUSED, .index = index};
  if (ask_js(e, ev.reason, sizeof ev.reason)) {
    // Cached against the stamp seen before asking: if the record changed meanwhile, the next open
    // sees a new stamp and asks again, so a stale "ok" cannot outlive the change.
    if (have) cache_ok(e, &now);
    return 0;
  }
  xt_post_event(e, &ev);
  return ESTALE;
}
