// Imported first by the runner: where the checkout is, and the native addons the fuzzed code loads
// as it is imported (src/linux loads extfs_native.node at once). This file runs compiled, from
// build-fuzz/js/fuzz/js/, or as it is (tap), so the checkout is found, not assumed.
import fs from 'node:fs'
import path from 'node:path'
import { setChunkBytes } from '../../src/native-engine/blob'

/** The checkout: the first directory up from here with binding.gyp. */
export const ROOT = (() => {
  let dir = __dirname
  while (!fs.existsSync(path.join(dir, 'binding.gyp')) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
})()

// The checkout's addons, unless the caller named others (an ASan build, say).
process.env.EXTFS_ADDON_DIR ??= path.join(ROOT, 'build', 'Release')

// src/native-engine/memory.ts forces full collections while tables are built (to keep a mount's peak
// low); with a table build per input they would take most of the time. It uses a global gc first.
;(globalThis as { gc?: () => void }).gc = () => undefined

// Table blobs and records in chunks of 1000 bytes instead of 32 MiB: small manifests then cross chunk
// boundaries (Blob.add and read, Records), and a build does not allocate hundreds of MiB per input.
setChunkBytes(1000)
