// The source tree the client matrix backs up night after night (test/e2e/clients.test.ts): every kind
// of entry and metadata populateEveryKind makes (regular, empty and sparse files, hard links, symlinks,
// a fifo, device nodes, a socket, UTF-8 names, user xattrs, access and default ACLs, setuid/sticky
// modes, other owners, nanosecond times), plus a file capability, and the one change of a later night.
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { runOk } from './exec'
import { populateEveryKind, seededBytes, type Population } from './populate'

export interface ClientTree extends Population {
  /** A file with security.capability (cap_net_raw+ep). */
  capability: string
  /** The regular file a later night rewrites (4 KiB). */
  changed: string
}

export async function populateForClients(root: string): Promise<ClientTree> {
  const pop = await populateEveryKind(root)
  // setcap last: a write or a chown clears the capability. It changes the ctime only, not the mtime
  // populateEveryKind gave the file.
  const capability = pop.nonRootOwned[0]
  await runOk('setcap', ['cap_net_raw+ep', path.join(root, capability)])
  return { ...pop, capability, changed: pop.regular[3] }
}

/** The owner's change between two nights: new bytes in one file, same size, in place. */
export async function changeOneFile(root: string, tree: ClientTree): Promise<void> {
  const file = path.join(root, tree.changed)
  const size = (await fsp.stat(file)).size
  const fh = await fsp.open(file, 'r+')
  try {
    await fh.write(seededBytes(4242, size), 0, size, 0)
    await fh.sync()
  } finally {
    await fh.close()
  }
}
