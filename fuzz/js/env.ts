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

// Delta blobs in chunks of 1000 bytes instead of 32 MiB: small deltas then cross chunk boundaries
// (Blob.add and read), and a delta packed per input does not allocate hundreds of MiB.
setChunkBytes(1000)
