// A line left unfinished on stderr: progress's status line on a terminal (src/cli/progress.ts), which
// it rewrites in place. A log line written after it would be glued to its end; the logger (src/log.ts)
// takes it away first (carriage return, clear to the end of the line), and progress draws it again at
// its next update.

let unfinished = false

/** Progress left a line unfinished on stderr (true), or ended it (false). */
export function markUnfinishedLine(on: boolean): void {
  unfinished = on
}

/** What to write on stderr before a whole line: the escapes that clear an unfinished line, once. */
export function takeUnfinishedLine(): string {
  if (!unfinished) return ''
  unfinished = false
  return '\r\x1b[K'
}
