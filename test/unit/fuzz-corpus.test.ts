// The JavaScript fuzz targets (fuzz/js/, docs/fuzzing.md) in the unit tests: every corpus entry (the
// seeds and the reproducers of what fuzzing found) run once, then a fixed number of inputs made from
// them; and the C targets' seeds through the C checks. scripts/fuzz runs the same targets for a
// bounded time, and the C ones. EXTFS_TEST_SEED replays another sequence of inputs.
import { ROOT } from '../../fuzz/js/env'
import t from 'tap'
import fc from 'fast-check'
import fs from 'node:fs'
import path from 'node:path'
import { viewAddon } from '../../src/native-engine/addon'
import { TARGETS } from '../../fuzz/js/targets'
import { seedsOf } from '../../fuzz/js/corpus'

const SEED = Number(process.env.EXTFS_TEST_SEED ?? 20261206)
const RUNS = 300

for (const target of TARGETS) {
  t.test(target.name, async (t) => {
    const seeds = seedsOf(target)
    t.ok(seeds.length > 0, `${seeds.length} corpus entries`)
    for (const s of seeds) t.doesNotThrow(() => target.run(s.bytes), s.name)
    let runs = 0
    fc.assert(fc.property(target.arbitrary(seeds), (input) => {
      runs++
      target.run(input)
    }), { seed: SEED, numRuns: RUNS })
    t.equal(runs, RUNS, `${RUNS} inputs made from them (seed ${SEED}; EXTFS_TEST_SEED replays another)`)
  })
}

// The C targets' seeds must pass the C checks, or the planner behind them goes unfuzzed: after a
// change of the table or delta layout, write them again (docs/fuzzing.md, "How inputs are made").
t.test('the C seeds pass the C checks', async (t) => {
  const addon = viewAddon()
  const again = 'stale: node build-fuzz/js/fuzz/js/run.js c-seeds writes them again'
  const dir = (name: string) => path.join(ROOT, 'fuzz', 'corpus', name)
  for (const f of fs.readdirSync(dir('c-tables'))) {
    const input = fs.readFileSync(path.join(dir('c-tables'), f))
    t.equal(addon.checkTables(input.subarray(16)), null, `c-tables/${f}: xt_check accepts the tables`, { again })
  }
  for (const f of fs.readdirSync(dir('c-delta'))) {
    const input = fs.readFileSync(path.join(dir('c-delta'), f))
    const tablesLength = input.readUInt32LE(0)
    const tables = input.subarray(24, 24 + tablesLength)
    t.equal(addon.checkTables(tables), null, `c-delta/${f}: xt_check accepts the tables`, { again })
    t.equal(addon.checkDelta(tables, input.subarray(24 + tablesLength), input.readUInt32LE(4)), null, `c-delta/${f}: xt_check_delta accepts the delta`, { again })
  }
  const scratch = t.testdir({})
  for (const f of fs.readdirSync(dir('c-load2'))) {
    t.equal(loadSeed(fs.readFileSync(path.join(dir('c-load2'), f)), scratch), null, `c-load2/${f}: the C loader accepts the body`, { again })
  }
})

/** A fuzz/c/load2.c input through the addon's loadV2 (its layout is that file's): null, or the refusal. */
function loadSeed(input: Buffer, scratch: string): string | null {
  const devices = input[1]!
  const at = 2 + 8 * devices
  const body = path.join(scratch, 'body')
  fs.writeFileSync(body, input.subarray(at + 24))
  const fd = fs.openSync(body, 'r')
  const tablesFd = viewAddon().openTablesFile(scratch)
  try {
    const deviceSizes = Array.from({ length: devices }, (_, i) => Number(input.readBigUInt64LE(2 + 8 * i)))
    const csums = input[0]! & 2 ? { csumAlg: 1, csumSize: 4, sectorSize: 4096 } : { csumAlg: 0, csumSize: 0, sectorSize: 0 }
    const r = viewAddon().loadV2(fd, { start: 0, end: input.length - at - 24 },
      { inodes: input.readUInt32LE(at + 8), dirs: input.readUInt32LE(at + 12), entries: Number(input.readBigUInt64LE(at + 16)) },
      { deviceSizes, features: input[0]! & 15, root: Number(input.readBigUInt64LE(at)), blockSize: 4096, ...csums }, tablesFd)
    return 'error' in r ? r.error : null
  } finally {
    fs.closeSync(tablesFd)
    fs.closeSync(fd)
  }
}
