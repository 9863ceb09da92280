// The data owner during a backup: keeps appending to, overwriting, creating and deleting files in a
// source tree and times every write. Run as a child process:
//   node owner-writer.js <dir> <stats.json> <pause-flag>
// While <pause-flag> exists it stops writing and creates <pause-flag>.ack (what an application does in a
// pre-freeze hook: quiesce), so a test can copy a reference of the tree as of the image. Once
// <pause-flag>.stop exists it writes its timings to <stats.json> and exits (a flag file, not a signal:
// the loop is synchronous on purpose, so no event handler would ever run). Plain JS so it runs without
// the TypeScript loader.
'use strict'
const fs = require('node:fs')
const path = require('node:path')

const [dir, statsFile, pauseFlag] = process.argv.slice(2)
const ackFile = `${pauseFlag}.ack`
const stopFile = `${pauseFlag}.stop`
const sleeper = new Int32Array(new SharedArrayBuffer(4))
const sleep = (ms) => Atomics.wait(sleeper, 0, 0, ms)
/** Wall-clock milliseconds with sub-millisecond resolution, comparable with `date +%s%N` in hooks. */
const now = () => performance.timeOrigin + performance.now()

const ops = [] // [startMs, endMs] of every write
const pauses = [] // [fromMs, toMs]
const stopped = () => fs.existsSync(stopFile)

function files() {
  const out = []
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory() && !e.name.startsWith('.extfs')) walk(p)
      else if (e.isFile()) out.push(p)
    }
  }
  walk(dir)
  return out
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)]
}

let serial = 0
function oneWrite(targets) {
  const r = Math.random()
  const block = Buffer.alloc(4096, serial & 0xff)
  if (r < 0.4) {
    const f = pick(targets)
    const fd = fs.openSync(f, 'r+')
    const size = fs.fstatSync(fd).size
    fs.writeSync(fd, block, 0, block.length, Math.floor(Math.random() * Math.max(1, size)))
    fs.closeSync(fd)
  } else if (r < 0.8) {
    fs.appendFileSync(pick(targets), block)
  } else if (r < 0.9) {
    fs.writeFileSync(path.join(dir, `new-${process.pid}-${serial}`), block)
  } else {
    const victim = pick(targets)
    fs.rmSync(victim, { force: true })
  }
  serial++
}

let targets = files()
while (!stopped()) {
  if (fs.existsSync(pauseFlag)) {
    const from = now()
    fs.writeFileSync(ackFile, '')
    while (fs.existsSync(pauseFlag) && !stopped()) sleep(2)
    fs.rmSync(ackFile, { force: true })
    pauses.push([from, now()])
    targets = files()
    continue
  }
  if (targets.length < 4 || serial % 64 === 0) targets = files()
  const start = now()
  try {
    oneWrite(targets)
  } catch (err) {
    if (err.code !== 'ENOENT') throw err // a file this writer deleted itself: pick again
    targets = files()
  }
  ops.push([start, now()])
  sleep(2)
}
fs.writeFileSync(statsFile, JSON.stringify({ ops, pauses }))
