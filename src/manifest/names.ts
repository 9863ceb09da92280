// Linux names (directory entries, symlink targets, xattr names) are bytes, not text. The manifest is
// JSON and the control plane works in JS strings, so a name is carried as a string in which valid
// UTF-8 decodes as usual and every byte that is not part of valid UTF-8 becomes the lone surrogate
// U+DC80..U+DCFF (Python's "surrogateescape", PEP 383). JSON writes those as "\udcXX" escapes and
// reads them back unchanged; valid UTF-8 never decodes to a lone surrogate, so the mapping is one to
// one. Written by hand: Node's TextDecoder can only replace bad bytes (U+FFFD), which loses them.

const ESCAPE_BASE = 0xdc00
const HAS_ESCAPE = /[\udc80-\udcff]/
const LONE_SURROGATE = /\p{Cs}/u

/** The string that carries `bytes`: UTF-8 where valid, each other byte as U+DC00 + byte. */
export function decodeName(bytes: Buffer): string {
  const text = bytes.toString('utf8')
  // The common case: valid UTF-8 (a U+FFFD then only where the bytes hold U+FFFD itself).
  if (!text.includes('\ufffd') || Buffer.from(text, 'utf8').equals(bytes)) return text
  let out = ''
  let at = 0
  while (at < bytes.length) {
    const len = utf8SequenceLength(bytes, at)
    if (len === 0) {
      out += String.fromCharCode(ESCAPE_BASE + bytes[at]!)
      at++
    } else {
      out += bytes.toString('utf8', at, at + len)
      at += len
    }
  }
  return out
}

/** The bytes a name carries (the inverse of decodeName). Throws on a lone surrogate that is no escape. */
export function encodeName(name: string): Buffer {
  if (!LONE_SURROGATE.test(name)) return Buffer.from(name, 'utf8')
  const parts: Buffer[] = []
  let run = ''
  for (const ch of name) { // by code point: a lone surrogate is one
    const c = ch.codePointAt(0)!
    if (c >= 0xd800 && c <= 0xdfff) {
      if (c < 0xdc80 || c > 0xdcff) throw new RangeError(`name ${printable(name)} holds a lone surrogate that stands for no byte`)
      parts.push(Buffer.from(run, 'utf8'), Buffer.of(c - ESCAPE_BASE))
      run = ''
    } else run += ch
  }
  parts.push(Buffer.from(run, 'utf8'))
  return Buffer.concat(parts)
}

/** The byte length of a name, without building it for the common case. */
export function nameBytes(name: string): number {
  return LONE_SURROGATE.test(name) ? encodeName(name).length : Buffer.byteLength(name, 'utf8')
}

/** The name holds bytes that are not UTF-8 (manifest feature "byte-names"). */
export function hasByteEscapes(name: string): boolean {
  return HAS_ESCAPE.test(name)
}

/**
 * Why `name` is not a name as decodeName writes it, or undefined: a lone surrogate that stands for no
 * byte, or escapes of bytes that form valid UTF-8 (two strings for one name would look alike in the view).
 */
export function nameEncodingProblem(name: string): string | undefined {
  if (!LONE_SURROGATE.test(name)) return undefined
  let bytes: Buffer
  try {
    bytes = encodeName(name)
  } catch {
    return 'is not valid Unicode (a lone surrogate that stands for no byte)'
  }
  return decodeName(bytes) === name ? undefined : 'escapes bytes that are valid UTF-8 (not the one way to write them)'
}

/** A path for Node's fs calls: the string when it is UTF-8, else its bytes. */
export function hostPath(name: string): string | Buffer {
  return HAS_ESCAPE.test(name) ? encodeName(name) : name
}

/**
 * For logs, errors and `inspect`: every byte that is not UTF-8, and every control character (a newline
 * in a name must not split a line), as \xNN; the rest as it is. For reading, not parsing back: a name
 * may itself contain the text "\x41" (the manifest holds every name exactly).
 */
export function printable(text: string): string {
  if (!UNPRINTABLE.test(text)) return text
  return text.replace(UNPRINTABLE_ALL, (ch) => {
    const c = ch.charCodeAt(0)
    return '\\x' + (c >= ESCAPE_BASE ? c - ESCAPE_BASE : c).toString(16).padStart(2, '0')
  })
}

const UNPRINTABLE = /[\x00-\x1f\x7f\udc80-\udcff]/
const UNPRINTABLE_ALL = new RegExp(UNPRINTABLE.source, 'g')

/**
 * Length of the well-formed UTF-8 sequence at `at` (1 to 4), or 0 when the byte there starts none:
 * The Unicode Standard, table 3-7 (no overlong forms, no surrogates, nothing above U+10FFFF).
 */
function utf8SequenceLength(b: Buffer, at: number): number {
  const b0 = b[at]!
  if (b0 < 0x80) return 1
  const cont = (i: number, lo = 0x80, hi = 0xbf) => at + i < b.length && b[at + i]! >= lo && b[at + i]! <= hi
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0
  if (b0 === 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0
  if ((b0 >= 0xe1 && b0 <= 0xec) || b0 === 0xee || b0 === 0xef) return cont(1) && cont(2) ? 3 : 0
  if (b0 === 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0
  if (b0 === 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0
  if (b0 >= 0xf1 && b0 <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0
  if (b0 === 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0
  return 0
}
