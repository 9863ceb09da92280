// Calling a JavaScript progress callback from C, shared by the export addon (native/export/bulk_napi.c:
// the bulk mappers' phases) and the view addon (native/view/tables_file.c: the manifest loader).
// Progress is not worth failing an export or a mount for: a callback that throws is dropped and not
// called again, and the work goes on.
#ifndef EXTFS_JS_PROGRESS_H
#define EXTFS_JS_PROGRESS_H

#include <node_api.h>
#include <stddef.h>

// Calls *fn(phase, values[0], …, values[n-1]) on this thread (phase left out when NULL), inside a
// handle scope of its own. Does nothing when *fn is NULL; sets *fn to NULL when the call fails, after
// clearing the exception it left pending. At most JS_PROGRESS_MAX_VALUES values.
#define JS_PROGRESS_MAX_VALUES 4
void js_progress_call(napi_env env, napi_value *fn, const char *phase, const double *values, size_t n);

#endif
