// Which mount a path lives on, from /proc/self/mountinfo (see proc(5)).
import fs from 'node:fs'

export interface MountEntry {
  major: number
  minor: number
  /** Where it is mounted, octal escapes decoded. */
  mountpoint: string
  /** The directory of the filesystem mounted there ("/" unless a bind mount of a subdirectory); optional for hand-made entries. */
  root?: string
  fsType: string
  /** The mount source (e.g. /dev/loop3p1, or "extfs:<config id>" for our views). */
  source: string
  readOnly: boolean
  /** The filesystem's own options (the last field: e.g. "rw,noacl,errors=remount-ro"). */
  superOptions: string[]
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function readMountTable(): MountEntry[] {
  const lines = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
  const entries: MountEntry[] = []
  for (const line of lines) {
    if (!line) continue
    // id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions
    const [left, right] = line.split(' - ')
    if (!right) continue
    const f = left.split(' ')
    const [major, minor] = f[2].split(':').map(Number)
    const [fsType, source, superOptions] = right.split(' ')
    entries.push({
      major, minor,
      mountpoint: unescape(f[4]),
      root: unescape(f[3]),
      fsType,
      source: unescape(source),
      readOnly: f[5].split(',').includes('ro'),
      superOptions: (superOptions ?? '').split(','),
    })
  }
  return entries
}

/** The mount entry whose mountpoint is the longest prefix of `realPath` (the last one mounted wins). */
export function mountOf(realPath: string, table = readMountTable()): MountEntry | undefined {
  let best: MountEntry | undefined
  for (const m of table) {
    const prefix = m.mountpoint === '/' ? '/' : m.mountpoint + '/'
    if (realPath !== m.mountpoint && !realPath.startsWith(prefix)) continue
    if (!best || m.mountpoint.length >= best.mountpoint.length) best = m
  }
  return best
}

export function isMountpoint(realPath: string, table = readMountTable()): boolean {
  return table.some((m) => m.mountpoint === realPath)
}
