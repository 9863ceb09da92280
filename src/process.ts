// Facts about other processes of this host, needed by the mover (its view daemons) and by remap (the
// owner of a lock): a leaf module, so that neither imports the other for it.

/** Whether process `pid` exists (signal 0 checks without sending anything). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
