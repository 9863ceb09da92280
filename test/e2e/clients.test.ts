// Issue 13, "real clients, nightly": the programs people back up with, pointed at the view the way
// they run every night (docs/clients.md). For each kind of frozen image (ext4 frozen, btrfs snapshot,
// XFS clone set), one populated tree, exported night after night and mounted at the same path:
//   night 1: restic, borg, GNU tar (level 0) and rsync -aHAX back up, bsdtar, cpio and cp -a copy; each
//     restore equals the source (less what the client is documented not to keep: client-allowances.ts);
//   night 2, a new export of the unchanged tree: restic, borg, tar (level 1) and rsync find nothing new
//     or changed; then the image's blocks move (xfs_fsr, btrfs balance), `extfs remap` publishes the
//     delta, the mounted view follows it, and they still find nothing;
//   night 3, one file rewritten: each names exactly that file, and each restore equals the source.
import t, { type Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { runOk } from '../helpers/exec'
import { ensureUnmounted, extfs, release, REMAPPED, scratchDir } from '../helpers/extfs'
import { changeOneFile, populateForClients, type ClientTree } from '../helpers/client-tree'
import { FROZEN_KINDS, type FrozenKind, type Source } from '../helpers/frozen-kinds'
import { borg, bsdtar, cpA, cpio, gnuTar, restic, rsync, type NightlyClient } from '../helpers/clients'
import { allowances } from '../helpers/client-allowances'
import { diffTrees, snapshotTree, type Tree } from '../helpers/tree'

/** Times to the nanosecond, the view's root included (it is the exported directory). */
const EXACT = { timePrecisionNs: 1 }

/** One night: export, mount at `view` (the same path every night), run fn, unmount, release. */
async function night(src: Source, manifest: string, view: string, fn: () => Promise<void>): Promise<void> {
  try {
    const exp = await extfs(['export', src.data, '--output', manifest, ...src.exportArgs])
    if (exp.code !== 0) throw new Error(`export (${exp.code}): ${exp.stderr}`)
    const mnt = await extfs(['mount', manifest, view, '--log-file', `${manifest}.view.log`])
    if (mnt.code !== 0) throw new Error(`mount (${mnt.code}): ${mnt.stderr}`)
    try {
      await fn()
    } finally {
      await ensureUnmounted(view)
    }
  } finally {
    await release(manifest)
  }
}

/** The restore equals the source, less what the client is documented not to keep (client-allowances.ts). */
async function restoredEquals(t: Test, client: string, what: string, source: Tree, restored: string): Promise<void> {
  const got = await snapshotTree(restored, EXACT)
  t.same(diffTrees(source, got, { allow: allowances(client, source) }), [], `${client}: ${what} equals the source`)
}

/** The paths a nightly client must report: what changed, and what it reads again by design; nothing else. */
async function reportsExactly(t: Test, c: NightlyClient, view: string, changed: string[], what: string): Promise<void> {
  const expected = [...new Set([...changed, ...(c.readAgain?.() ?? [])])].sort()
  t.same((await c.backup(view)).sort(), expected, `${c.name}: ${what}: ${changed.length ? `exactly ${changed.join(', ')}` : 'nothing new or changed'}`)
  if (c.storedAnew) await storesOnly(t, c, changed, what)
}

/**
 * What restic stored anew, metadata included, is the changed files and the directories holding them:
 * a directory whose times, owner or inode number moved would be a new tree in the repository.
 */
async function storesOnly(t: Test, c: NightlyClient, changed: string[], what: string): Promise<void> {
  const anew = await c.storedAnew!()
  if (anew === undefined) {
    t.comment(`${c.name}: ${what}: the view's device number is not last night's (another mount took it): not compared (docs/clients.md)`)
    return
  }
  const expected = [...new Set(changed.flatMap((rel) => [rel, ...directoriesOf(rel)]))].sort()
  t.same(anew.sort(), expected, `${c.name}: ${what}: stores ${changed.length ? 'only that file and its directories' : 'no entry'} anew, metadata included`)
}

/** The directories holding `rel`, from the view's root down: "a/b/c" -> [".", "a", "a/b"]. */
function directoriesOf(rel: string): string[] {
  const parts = rel.split('/')
  return ['.', ...parts.slice(1).map((_, i) => parts.slice(0, i + 1).join('/'))]
}

async function clientMatrix(t: Test, kind: FrozenKind): Promise<void> {
  const scratch = await scratchDir(t, 'extfs-clients-')
  const view = path.join(scratch, 'view')
  await fsp.mkdir(view)
  const manifest = path.join(scratch, 'nightly.json')
  const nightly: NightlyClient[] = [restic(scratch), borg(scratch), gnuTar(scratch), rsync(scratch)]
  await kind.withSource(async (src) => {
    const tree: ClientTree = await populateForClients(src.data)
    await runOk('sync', [])
    const first = await snapshotTree(src.data, EXACT)

    await night(src, manifest, view, async () => {
      for (const c of nightly) {
        const reported = await c.backup(view)
        t.ok(reported.length > 0, `${c.name}: the first night backs up ${reported.length} entries`)
        await restoredEquals(t, c.name, 'the first restore', first, await c.restore(path.join(scratch, `${c.name}-1`)))
      }
      for (const c of [bsdtar, cpio, cpA]) {
        const dest = path.join(scratch, `${c.name}-copy`)
        await c.copy(view, dest)
        await restoredEquals(t, c.name, 'the copy', first, dest)
      }
    })

    await night(src, manifest, view, async () => {
      for (const c of nightly) await reportsExactly(t, c, view, [], 'an unchanged tree, exported again')
      await src.relocate(manifest, tree.fragmented)
      const remap = await extfs(['remap', manifest])
      t.match(remap.stdout, REMAPPED, `the blocks moved and remap published a delta: ${remap.stdout.trim()} ${remap.stderr.trim()}`)
      for (const c of nightly) await reportsExactly(t, c, view, [], 'after the move and its remap')
      // Not vacuous: the view did follow the delta, and serves the moved files from their new places.
      t.match(await fsp.readFile(`${manifest}.view.log`, 'utf8'), /followed the config ID/, 'the view followed the delta')
      for (const rel of tree.fragmented) {
        t.ok((await fsp.readFile(path.join(view, rel))).equals(await fsp.readFile(path.join(src.data, rel))), `${rel}, moved, reads right through the view`)
      }
    })

    await changeOneFile(src.data, tree)
    const third = await snapshotTree(src.data, EXACT)
    await night(src, manifest, view, async () => {
      for (const c of nightly) {
        await reportsExactly(t, c, view, [tree.changed], 'one file rewritten')
        await restoredEquals(t, c.name, 'the restore of the third night', third, await c.restore(path.join(scratch, `${c.name}-3`)))
      }
    })
  })
}

for (const kind of FROZEN_KINDS) t.test(`${kind.name}: real clients, night after night`, (t) => clientMatrix(t, kind))
