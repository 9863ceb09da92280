// The one binary search (src/extents/search.ts) against a linear scan, on tables and random keys.
import t from 'tap'
import { lastAtOrBefore } from '../../src/extents/search'

const linear = (keys: number[], key: number) => {
  let found = -1
  keys.forEach((k, i) => { if (k <= key) found = i })
  return found
}
const search = (keys: number[], key: number) => lastAtOrBefore(keys.length, (i) => keys[i]!, key)

t.test('tables', async (t) => {
  t.equal(search([], 5), -1, 'empty')
  t.equal(search([0, 10, 20], -1), -1, 'before the first')
  t.equal(search([0, 10, 20], 0), 0, 'on the first')
  t.equal(search([0, 10, 20], 15), 1, 'between')
  t.equal(search([0, 10, 20], 20), 2, 'on the last')
  t.equal(search([0, 10, 20], 2 ** 53), 2, 'past the last')
})

t.test('random ascending keys agree with a linear scan', async (t) => {
  let seed = 12345
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  let bad = 0
  for (let round = 0; round < 2000; round++) {
    const keys: number[] = []
    for (let k = 0, n = rand(20); k < n; k++) keys.push((keys.at(-1) ?? 0) + 1 + rand(5))
    const key = rand(120) - 5
    if (search(keys, key) !== linear(keys, key)) bad++
  }
  t.equal(bad, 0, '2000 random cases')
})
