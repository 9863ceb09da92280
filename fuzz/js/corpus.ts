// The seeds of a target: fuzz/corpus/<target>/ and the directories the target names besides.
import fs from 'node:fs'
import path from 'node:path'
import { ROOT } from './env'
import { seedOf, type Seed } from './mutate'
import type { Target } from './targets'

/** Every file of fuzz/corpus/<target>/ and of the target's other seed directories, sorted by name. */
export function seedsOf(t: Target, root = ROOT): Seed[] {
  const dirs = [path.join('fuzz', 'corpus', t.name), ...(t.alsoSeeds ?? [])]
  const seeds: Seed[] = []
  for (const dir of dirs) {
    const abs = path.join(root, dir)
    if (!fs.existsSync(abs)) continue
    for (const f of fs.readdirSync(abs).sort()) {
      const file = path.join(abs, f)
      if (fs.statSync(file).isFile()) seeds.push(seedOf(path.join(dir, f), fs.readFileSync(file)))
    }
  }
  return seeds
}
