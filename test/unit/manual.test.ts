// The manual pages and bash completion (src/cli/manual.ts) say what --help says: every option and
// argument `extfs <command> --help` prints, term and description, is in the command's page, nothing
// hidden is, the pages render without warnings, and the completion completes commands, options and
// choices in a real bash.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import type { Command } from 'commander'
import { buildProgram } from '../../src/cli/main'
import { bashCompletion, EXIT_CODE_DOC, exitCodeDocs, manualPages, pageCommands } from '../../src/cli/manual'
import { ExitCode } from '../../src/errors'
import { run } from '../helpers/exec'
import { extfs } from '../helpers/extfs'

const program = buildProgram()
const pages = manualPages(program, exitCodeDocs(fs.readFileSync(EXIT_CODE_DOC, 'utf8')))

/** A page's text as a reader sees it, whitespace collapsed: requests' names and escapes dropped. */
function pageText(roff: string): string {
  return collapse(roff.split('\n').map((l) => l.replace(/^\.[A-Z]+ ?/, ''))
    .join('\n').replace(/\\f[BIRP]/g, '').replace(/\\-/g, '-').replace(/\\e/g, '\\').replace(/\\&/g, '')
    .replace(/\\\[u([0-9A-F]{4,})\]/g, (_, hex: string) => String.fromCodePoint(parseInt(hex, 16))))
}

function collapse(text: string): string {
  return text.replace(/\s+/g, ' ').trim()
}

/** The items (term, description) of the sections of commander's --help output, wrapped lines joined. */
function helpItems(help: string): Array<{ section: string; term: string; description: string }> {
  const items: Array<{ section: string; term: string; description: string }> = []
  let section = ''
  for (const line of help.split('\n')) {
    const heading = /^([A-Z][a-z]+):$/.exec(line)
    const start = /^ {2}(\S.*?)(?: {2,}(\S.*))?$/.exec(line)
    const more = /^ {3,}(\S.*)$/.exec(line)
    if (heading) section = heading[1]!
    else if (section && start) items.push({ section, term: start[1]!, description: start[2] ?? '' })
    else if (section && more && items.length > 0) items[items.length - 1]!.description += ` ${more[1]}`
  }
  return items
}

function allCommands(): Array<[string[], Command, string]> {
  return [[[], program, 'extfs.1'], ...pageCommands(program).map((c): [string[], Command, string] => [[c.name()], c, `extfs-${c.name()}.1`])]
}

t.test('each page holds every option and argument its --help prints, and the same number of options', async (t) => {
  t.equal(pages.size, pageCommands(program).length + 1, 'extfs.1 and one page per command')
  // What --help prints is helpInformation() (spawning the CLI for each would take seconds): the same
  // text, as the real `extfs mount --help` shows.
  const real = await extfs(['mount', '--help'])
  t.equal(real.stdout, pageCommands(program).find((c) => c.name() === 'mount')!.helpInformation(), 'extfs mount --help is helpInformation()')
  for (const [, cmd, file] of allCommands()) {
    const items = helpItems(cmd.helpInformation())
    const text = pageText(pages.get(file)!)
    t.ok(items.filter((i) => i.section === 'Options').length >= 1, `${file}: --help has options to compare`)
    for (const { section, term, description } of items) {
      t.ok(text.includes(collapse(term)), `${file}: ${section} ${term}`)
      t.ok(text.includes(collapse(description)), `${file}: ${section} ${term}: its description`)
    }
    const pageOptions = (pages.get(file)!.split('.SH OPTIONS\n')[1]!.split('\n.SH ')[0]!.match(/^\.TP$/gm) ?? []).length
    t.equal(pageOptions, items.filter((i) => i.section === 'Options').length, `${file}: as many options as --help`)
    t.ok(text.includes(collapse(cmd.description())), `${file}: the command's description`)
  }
})

t.test('nothing hidden from --help is in a page or the completion', async (t) => {
  const hidden = pageCommands(program).flatMap((c) => c.options.filter((o) => o.hidden).map((o) => o.long!))
  t.ok(hidden.includes('--report'), 'mount --report is hidden (the check has something to find)')
  const all = [...pages.values()].map(pageText).join('\n')
  const completion = bashCompletion(program)
  for (const flag of hidden) {
    t.notOk(all.includes(flag), `${flag} not in a page`)
    t.notOk(completion.includes(flag), `${flag} not completed`)
  }
})

t.test('the pages render without warnings (groff -ww, man --warnings)', async (t) => {
  const dir = t.testdir()
  const files = [...pages].map(([file, roff]) => {
    fs.writeFileSync(path.join(dir, file), roff)
    return path.join(dir, file)
  })
  const g = await run('groff', ['-ww', '-man', '-z', ...files])
  t.same([g.code, g.stderr], [0, ''], 'groff -ww: every page')
  const m = await run('man', ['--warnings', '-l', ...files], { env: { ...process.env, MANWIDTH: '80' } })
  t.same([m.code, m.stderr], [0, ''], 'man --warnings -l: every page')
  t.equal(m.stdout.match(/^NAME$/gm)?.length, files.length, 'every page rendered')
  t.match(pageText(pages.get('extfs.1')!), /7 \(Stale\) the config ID is not current/, 'exit codes from docs/cli.md')
})

t.test('exit codes: every code of ExitCode has its row in docs/cli.md, or the pages are not made', async (t) => {
  const doc = fs.readFileSync(EXIT_CODE_DOC, 'utf8')
  t.equal(exitCodeDocs(doc).length, Object.values(ExitCode).filter((v) => typeof v === 'number').length, 'a row per code')
  t.throws(() => exitCodeDocs(doc.replace(/^\| 7 \| Stale \|.*\n/m, '')), /exit code 7 is Stale in src\/errors.ts, missing in the table/)
  t.throws(() => exitCodeDocs(doc.replace('| 9 | Permission |', '| 9 | Root |')), /exit code 9 is Permission in src\/errors.ts, Root in the table/)
})

t.test('bash completion: valid bash; completes commands, options, choices and the command after --', async (t) => {
  const file = path.join(t.testdir(), 'extfs')
  fs.writeFileSync(file, bashCompletion(program))
  t.same((await run('bash', ['-n', file])).code, 0, 'bash -n')
  const complete = async (...words: string[]) => {
    const r = await run('bash', ['-c', 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _extfs; printf "%s\\n" "${COMPREPLY[@]}"', '_', file, ...words])
    t.equal(r.stderr, '', `no errors completing ${words.join(' ')}`)
    return r.stdout.split('\n').filter(Boolean)
  }
  t.same(await complete('extfs', 'mo'), ['mount'])
  t.same(await complete('extfs', 'mount', '--pre'), ['--prefetch-window'])
  t.same(await complete('extfs', 'export', '--frozen-image', 's'), ['snapshot'])
  t.same(await complete('extfs', 'serve', '--log-level', 'w'), ['warn'])
  t.same(await complete('extfs', 'mount', '--re'), [], 'the hidden --report is not offered')
  t.same(await complete('extfs', 'mount', 'm.json', ''), [], 'arguments: left to file names (-o default)')
  t.ok((await complete('extfs', 'backup', 'm.json', '--', 'ta')).includes('tar'), 'after --: a command')
  t.same(await complete('extfs', 'backup', 'm.json', '--', 'tar', '--x'), [], 'the command\'s own options are not extfs\'s')
  t.same((await complete('extfs', '--')).sort(), ['--help', '--version'])
})
