// A full garbage collection on demand, for the moments the mover holds a large transient: the
// staging chunks of the view tables (stream-tables.ts) are unreachable once copied into the image,
// but V8 frees ArrayBuffers only when it collects, and the addon's own copy of the image (malloc, which
// V8 does not see) comes next. Collecting in between keeps the peak at two images, not three.
import v8 from 'node:v8'
import vm from 'node:vm'

let gc: (() => void) | null | undefined

export function collectGarbage(): void {
  if (gc === undefined) {
    const global = (globalThis as { gc?: () => void }).gc
    try {
      if (global) gc = global
      else {
        // Exposing gc after start-up is allowed for a new context; the flag affects nothing else we use.
        v8.setFlagsFromString('--expose-gc')
        gc = vm.runInNewContext('gc') as () => void
      }
    } catch {
      gc = null
    }
  }
  gc?.()
}
