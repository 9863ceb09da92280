// Required into every Node process of scripts/sanitize (NODE_OPTIONS=--require). Node is not built
// with ASan, so libasan must be preloaded into it before the sanitized addons load; but it must stay
// out of the tools the tests run (tar, dd, rsync, mkfs, python3...): ASan's allocator aborts dd on an
// aligned_alloc that glibc accepts, LeakSanitizer reports every tool's exit-time leaks, and it all
// runs several times slower. So LD_PRELOAD leaves this process's environment here, and is put back only
// for children that are Node: process.execPath, `node`, or a script whose #! line names node
// (bin/extfs). Synchronous spawns (spawnSync, execFileSync) are not covered: no test starts Node so.
'use strict'
const cp = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const preload = process.env.EXTFS_ASAN_PRELOAD
if (preload) {
  delete process.env.LD_PRELOAD
  const isNode = (file) => {
    if (typeof file !== 'string') return false
    if (file === process.execPath || path.basename(file) === 'node') return true
    if (!file.includes('/')) return false
    try {
      const head = Buffer.alloc(128)
      const fd = fs.openSync(file, 'r')
      try {
        fs.readSync(fd, head, 0, head.length, 0)
      } finally {
        fs.closeSync(fd)
      }
      return /^#!.*\bnode\b/.test(head.toString('latin1').split('\n')[0])
    } catch {
      return false
    }
  }
  // Every asynchronous spawn (spawn, execFile, exec, fork) ends here with the environment as
  // "NAME=value" pairs.
  const spawn = cp.ChildProcess.prototype.spawn
  cp.ChildProcess.prototype.spawn = function (options) {
    if (options && Array.isArray(options.envPairs)) {
      options.envPairs = options.envPairs.filter((e) => !e.startsWith('LD_PRELOAD='))
      if (isNode(options.file)) options.envPairs.push(`LD_PRELOAD=${preload}`)
    }
    return spawn.call(this, options)
  }
}
