#include "js_progress.h"

#include <stdbool.h>

void js_progress_call(napi_env env, napi_value *fn, const char *phase, const double *values, size_t n) {
  napi_handle_scope scope;
  if (*fn == NULL || n > JS_PROGRESS_MAX_VALUES || napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value argv[JS_PROGRESS_MAX_VALUES + 1], recv, ignored, err;
  size_t argc = 0;
  bool ok = phase == NULL || napi_create_string_utf8(env, phase, NAPI_AUTO_LENGTH, &argv[argc++]) == napi_ok;
  for (size_t i = 0; ok && i < n; i++) ok = napi_create_double(env, values[i], &argv[argc++]) == napi_ok;
  ok = ok && napi_get_undefined(env, &recv) == napi_ok && napi_call_function(env, recv, *fn, argc, argv, &ignored) == napi_ok;
  if (!ok) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) napi_get_and_clear_last_exception(env, &err);
    *fn = NULL;
  }
  napi_close_handle_scope(env, scope);
}
