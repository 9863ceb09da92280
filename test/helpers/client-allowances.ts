// What each client is documented (docs/clients.md) not to keep, as differences a restore may show from
// its source. Each was seen with the same client copying a plain local directory too, so none of them
// is the view's doing. Everything not named here is compared exactly: data, names, modes, owners,
// nanosecond mtimes, symlink targets, device numbers, xattrs, ACLs and hard links.
import * as path from 'node:path'
import type { Difference, Tree } from './tree'

type Allow = (d: Difference) => boolean

const NS_PER_S = 1_000_000_000n

/** restic, borg, GNU tar and bsdtar skip sockets by design: a server binds its socket anew when it starts. */
const socketSkipped: Allow = (d) => d.field === 'presence' && d.first?.kind === 'socket' && d.second === undefined

/**
 * borg extract, bsdtar -x and cpio -i extract into the current (or -C) directory and leave the metadata
 * of that directory, `.`, as it is, although the archive holds it.
 */
const rootTimesKept: Allow = (d) => d.rel === '.' && d.field === 'mtimeNs'

/** GNU cpio's newc format stores mtime in whole seconds. */
const secondsOnly: Allow = (d) =>
  d.field === 'mtimeNs' && d.first?.mtimeNs !== undefined && d.second?.mtimeNs !== undefined && d.first.mtimeNs / NS_PER_S === d.second.mtimeNs / NS_PER_S

/** GNU cpio 2.13 sets no time on the symlinks it extracts: they get the time of extraction. */
const symlinkTimesNotSet: Allow = (d) => d.field === 'mtimeNs' && d.first?.kind === 'symlink'

/** GNU cpio's formats have no place for xattrs or ACLs (security.capability included): absent in the copy. */
const noXattrsOrAcls: Allow = (d) => {
  if (!d.second) return false
  if (d.field === 'acl') return d.second.acl === undefined
  return d.field.startsWith('xattr ') && d.second.xattrs[d.field.slice('xattr '.length)] === undefined
}

/**
 * cpio -i makes the hard links of a newc archive after it set the times of the directories holding
 * them (the data comes with the last name), so those directories get the time of extraction.
 */
const linkDirTimes = (source: Tree): Allow => (d) =>
  d.field === 'mtimeNs' && d.first?.kind === 'dir' && [...source].some(([rel, e]) => e.linkGroup !== undefined && path.dirname(rel) === d.rel)

const any = (...allows: Allow[]): Allow => (d) => allows.some((a) => a(d))

/** By client name (clients.ts), for a restore of `source`. rsync -aHAX and cp -a keep everything compared. */
export function allowances(client: string, source: Tree): Allow {
  switch (client) {
    case 'restic':
    case 'GNU tar':
      return socketSkipped
    case 'borg':
    case 'bsdtar':
      return any(socketSkipped, rootTimesKept)
    case 'cpio':
      return any(rootTimesKept, secondsOnly, symlinkTimesNotSet, noXattrsOrAcls, linkDirTimes(source))
    default:
      return () => false
  }
}
