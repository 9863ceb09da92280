// The JavaScript fuzz runner (scripts/fuzz runs it; docs/fuzzing.md):
//   run.js fuzz <target> <seconds> [seed]   fuzz one target for a bounded time (fast-check, time-limited)
//   run.js replay <target> <file>...        run saved inputs (a reproducer, a corpus entry) once each
//   run.js list                             the targets, one line each
//   run.js c-seeds                          (re)write the C targets' seeds from the manifests and deltas here
// A finding (crash, model disagreement) is shrunk, saved under build-fuzz/findings/<target>/ and named;
// exit 1. A hang (one input running over 20 s) is caught by a watchdog thread, which saves the input,
// names it and kills the process (exit by SIGKILL). Otherwise exit 0, after a line with the counts.
import { ROOT } from './env'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import fc from 'fast-check'
import { seedsOf } from './corpus'
import { Finding, TARGETS, type Target } from './targets'
import { validateManifest } from '../../src/manifest/validate'
import { packedTables } from '../../test/helpers/packed-tables'
import { loadFacts } from '../../src/native-engine/mapped-tables'
import { readLayout } from '../../src/manifest/v2/read'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import type { Manifest } from '../../src/manifest/types'
import { packDelta } from '../../src/native-engine/delta-tables'
import { parseDelta } from '../../src/delta/io'
import { ImageMap } from '../../src/delta/chain'

const FINDINGS = path.join(ROOT, 'build-fuzz', 'findings')
const HANG_MS = 20_000
const MAX_INPUT = 4 * 1024 * 1024

function targetNamed(name: string): Target {
  const t = TARGETS.find((x) => x.name === name)
  if (!t) throw new Error(`no target ${name}; targets: ${TARGETS.map((x) => x.name).join(', ')}`)
  return t
}

function save(t: Target, input: Buffer, kind: string): string {
  const dir = path.join(FINDINGS, t.name)
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, `${kind}-${crypto.createHash('sha1').update(input).digest('hex').slice(0, 12)}`)
  fs.writeFileSync(file, input)
  return file
}

/**
 * The input being run, in memory a watchdog thread can read while this one is stuck: [0] the number
 * of inputs started, [1] 1 while one runs, [2] its length; its bytes after.
 */
class Watchdog {
  private readonly sab = new SharedArrayBuffer(16 + MAX_INPUT)
  private readonly meta = new Int32Array(this.sab, 0, 4)
  private readonly bytes = new Uint8Array(this.sab, 16)
  private readonly worker: Worker

  constructor(t: Target) {
    const code = `
      const { workerData } = require('node:worker_threads')
      const fs = require('node:fs'), path = require('node:path'), crypto = require('node:crypto')
      const meta = new Int32Array(workerData.sab, 0, 4), bytes = new Uint8Array(workerData.sab, 16)
      let last = -1, since = Date.now()
      for (;;) {
        Atomics.wait(meta, 3, 0, 500)
        const n = Atomics.load(meta, 0)
        if (n !== last || Atomics.load(meta, 1) === 0) { last = n; since = Date.now(); continue }
        if (Date.now() - since < workerData.hangMs) continue
        const input = Buffer.from(bytes.subarray(0, Atomics.load(meta, 2)))
        fs.mkdirSync(workerData.dir, { recursive: true })
        const file = path.join(workerData.dir, 'hang-' + crypto.createHash('sha1').update(input).digest('hex').slice(0, 12))
        fs.writeFileSync(file, input)
        fs.writeSync(2, 'fuzz: ' + workerData.target + ': HANG: an input ran over ' + workerData.hangMs / 1000 + ' s; saved to ' + file +
          '\\nfuzz: replay: scripts/fuzz --replay ' + workerData.target + ' ' + file + '\\n')
        process.kill(process.pid, 'SIGKILL')
      }`
    this.worker = new Worker(code, { eval: true, workerData: { sab: this.sab, dir: path.join(FINDINGS, t.name), hangMs: HANG_MS, target: t.name } })
    this.worker.unref()
  }

  begin(input: Buffer): void {
    const n = Math.min(input.length, MAX_INPUT)
    this.bytes.set(input.subarray(0, n))
    Atomics.store(this.meta, 2, n)
    Atomics.add(this.meta, 0, 1)
    Atomics.store(this.meta, 1, 1)
  }

  end(): void {
    Atomics.store(this.meta, 1, 0)
  }

  stop(): Promise<number> {
    return this.worker.terminate()
  }
}

async function fuzz(t: Target, seconds: number, seed: number): Promise<number> {
  const seeds = seedsOf(t)
  const dog = new Watchdog(t)
  let execs = 0
  const started = Date.now()
  const property = fc.property(t.arbitrary(seeds), (input) => {
    execs++
    dog.begin(input)
    try {
      t.run(input)
    } finally {
      dog.end()
    }
  })
  // Every seed as it is first, then generated inputs until the time is up.
  const examples = seeds.map((s) => [s.bytes] as [Buffer])
  const details = fc.check(property, {
    seed, numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, examples, endOnFailure: false,
  })
  await dog.stop()
  const secs = (Date.now() - started) / 1000
  const rate = Math.round(execs / Math.max(secs, 0.001))
  if (!details.failed) {
    console.log(`fuzz: ${t.name}: ${execs} executions in ${secs.toFixed(0)} s (${rate}/s), ${seeds.length} seeds, seed ${seed}: nothing found`)
    return 0
  }
  const input = details.counterexample![0] as Buffer
  const file = save(t, input, 'finding')
  const error = details.errorInstance
  console.error(`fuzz: ${t.name}: FOUND after ${execs} executions (seed ${seed}, shrunk ${details.numShrinks} times):`)
  console.error(`fuzz:   ${error instanceof Finding ? error.message : (error as Error | undefined)?.stack ?? String(error)}`)
  console.error(`fuzz:   input saved to ${file}`)
  console.error(`fuzz:   replay: scripts/fuzz --replay ${t.name} ${file}`)
  return 1
}

function replay(t: Target, files: string[]): number {
  let failed = 0
  for (const f of files) {
    try {
      t.run(fs.readFileSync(f))
      console.log(`fuzz: ${t.name}: ${f}: ok`)
    } catch (err) {
      failed++
      console.error(`fuzz: ${t.name}: ${f}: ${err instanceof Finding ? err.message : (err as Error).stack}`)
    }
  }
  return failed > 0 ? 1 : 0
}

/**
 * The C targets' seeds, from the JS corpora: every valid manifest packed into tables (fuzz/corpus/
 * c-tables/), every delta case packed with its manifest's tables (fuzz/corpus/c-delta/), in the input
 * formats of fuzz/c/tables.c and fuzz/c/delta.c; every valid manifest as a v2 body (fuzz/corpus/c-load2/,
 * fuzz/c/load2.c). Run again when the table, delta or v2 layout changes.
 */
function cSeeds(): number {
  const u64 = (v: number) => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(v))
    return b
  }
  const u32 = (v: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(v)
    return b
  }
  const write = (dir: string, name: string, bytes: Buffer) => {
    fs.mkdirSync(path.join(ROOT, 'fuzz', 'corpus', dir), { recursive: true })
    fs.writeFileSync(path.join(ROOT, 'fuzz', 'corpus', dir, `${path.basename(name, '.json')}.bin`), bytes)
  }
  for (const s of seedsOf(targetNamed('manifest'))) {
    let m
    try {
      m = validateManifest(s.value)
    } catch {
      continue
    }
    write('c-tables', s.name, Buffer.concat([u64(4095), u64(8194), packedTables(m, m.devices.map((_, i) => 3 + i)).image]))
    write('c-load2', s.name, load2Seed(m))
  }
  for (const s of seedsOf(targetNamed('delta'))) {
    const c = s.value as { manifest: unknown; delta: string }
    let m, d
    try {
      m = validateManifest(c.manifest)
      d = parseDelta(c.delta, ImageMap.ofManifest(m).context(), s.name)
    } catch {
      continue // a regression entry the parser refuses
    }
    const { image, paths } = packedTables(m, m.devices.map((_, i) => 3 + i))
    const delta = packDelta(d.files.map((f) => ({ index: paths.index(f.ino), extents: f.extents ?? [] })), d.devices.map((x) => x.size))
    write('c-delta', s.name, Buffer.concat([u32(image.length), u32(d.devices.length), u64(1), u64(8192), image, delta]))
  }
  return 0
}

/** A manifest as fuzz/c/load2.c takes it: the loader's facts, the trailer's counts, the v2 body. */
function load2Seed(m: Manifest): Buffer {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-seed-'))
  try {
    const file = path.join(dir, 'm.extfs')
    const { inodes, signature: _s, ...header } = m
    writeManifestV2(file, header, inodes)
    const fd = fs.openSync(file, 'r')
    try {
      const layout = readLayout(fd, file, Number.MAX_SAFE_INTEGER)
      const f = loadFacts(layout.header, layout.facts.deviceSizes)
      const body = Buffer.alloc(layout.bodyEnd - layout.bodyStart)
      fs.readSync(fd, body, 0, body.length, layout.bodyStart)
      const fixed = Buffer.alloc(2 + 8 * f.deviceSizes.length + 24)
      fixed[0] = f.features
      fixed[1] = f.deviceSizes.length
      f.deviceSizes.forEach((size, i) => fixed.writeBigUInt64LE(BigInt(size), 2 + 8 * i))
      let at = 2 + 8 * f.deviceSizes.length
      fixed.writeBigUInt64LE(BigInt(f.root), at)
      fixed.writeUInt32LE(layout.trailer.inodes, at + 8)
      fixed.writeUInt32LE(layout.trailer.dirs, at + 12)
      fixed.writeBigUInt64LE(BigInt(layout.trailer.entries), at + 16)
      return Buffer.concat([fixed, body])
    } finally {
      fs.closeSync(fd)
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, name, ...rest] = argv
  if (cmd === 'list') {
    for (const t of TARGETS) console.log(`${t.name}\t${t.about}`)
    return 0
  }
  if (cmd === 'fuzz' && name !== undefined) {
    const seconds = Number(rest[0] ?? 60)
    const seed = rest[1] !== undefined ? Number(rest[1]) : crypto.randomInt(2 ** 31)
    return fuzz(targetNamed(name), seconds, seed)
  }
  if (cmd === 'replay' && name !== undefined && rest.length > 0) return replay(targetNamed(name), rest)
  if (cmd === 'c-seeds') return cSeeds()
  console.error('usage: run.js fuzz <target> <seconds> [seed] | replay <target> <file>... | list | c-seeds')
  return 2
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code
  }, (err: Error) => {
    console.error(err.stack)
    process.exitCode = 2
  })
}
