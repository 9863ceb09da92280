// Manual pages (roff) and bash completion, generated from the commander program that --help prints
// from, through commander's own Help object: the same terms, descriptions, defaults and choices, and
// the same hidden options left out. Nothing here is written per command, so a command or option added
// to main.ts appears in `man` and in completion at the next install (scripts/gen-manual).
import fs from 'node:fs'
import path from 'node:path'
import type { Command, Help } from 'commander'
import { ExitCode } from '../errors'
import { DEFAULT_LOG_FILE } from '../mover/daemon'
import { DEFAULT_STATE_PATH } from '../service/state'

/** Where the exit codes' meanings are written for people; the man page quotes that table. */
export const EXIT_CODE_DOC = path.join(__dirname, '..', '..', 'docs', 'cli.md')

/** The environment the CLI reads (src/view/engine.ts, main.ts). */
const ENVIRONMENT: Array<[string, string]> = [
  ['EXTFS_ENGINE', '`fuse-native` serves views with the first, JavaScript engine instead of the native one (docs/native-engine.md); unset for the native engine.'],
  ['EXTFS_DEBUG', 'when set, an internal error (exit 1) also prints its stack trace.'],
]

const FILES: Array<[string, string]> = [
  [DEFAULT_LOG_FILE, 'the log of views running in the background (`mount`, `backup`; `--log-file`).'],
  [DEFAULT_STATE_PATH, '`serve`\'s state database (`--state`).'],
  ['/etc/extfs/serve.env', 'the arguments of extfs-serve.service.'],
  ['/etc/extfs/backup/<job>.env', 'one backup job, for extfs-backup@<job>.service and its timer, or `extfs-backup-job` from cron.'],
]

export interface ExitCodeDoc {
  code: number
  name: string
  /** Markdown, as in docs/cli.md. */
  meaning: string
}

/**
 * The rows of docs/cli.md's exit-code table (`| code | name | meaning |`). Loud when a code of ExitCode
 * has no row or a row names a code differently: the page would be wrong.
 */
export function exitCodeDocs(markdown: string): ExitCodeDoc[] {
  const section = markdown.split(/^## /m).find((s) => s.startsWith('Exit codes'))
  if (!section) throw new Error(`${EXIT_CODE_DOC}: no "## Exit codes" section`)
  const rows = section.split('\n').filter((l) => /^\| *[0-9]+ *\|/.test(l)).map((l) => {
    const cells = l.slice(1, l.trimEnd().endsWith('|') ? l.trimEnd().length - 1 : undefined).split(/(?<!\\)\|/).map((c) => c.trim())
    return { code: Number(cells[0]), name: cells[1]!, meaning: cells.slice(2).join('|') }
  })
  for (const [name, code] of Object.entries(ExitCode)) {
    if (typeof code !== 'number') continue
    const row = rows.find((r) => r.code === code)
    if (row?.name !== name) throw new Error(`${EXIT_CODE_DOC}: exit code ${code} is ${name} in src/errors.ts, ${row ? row.name : 'missing'} in the table`)
  }
  return rows
}

// --- roff ---

/**
 * Text as roff: backslashes and hyphens escaped (so options copy and paste), characters beyond ASCII
 * by their code point (groff reads Latin-1), no line read as a request.
 */
function roffText(text: string): string {
  return text.replace(/\\/g, '\\e').replace(/-/g, '\\-').replace(/^([.'])/gm, '\\&$1')
    .replace(/[^\x00-\x7f]/gu, (c) => `\\[u${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}]`)
}

/** Markdown of docs/cli.md's cells as roff: `code` bold, *emphasis* italic, links as their text. */
function roffMarkdown(md: string): string {
  const plain = md.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/\\\|/g, '|')
  return plain.split(/(`[^`]*`)/).map((part) => part.startsWith('`') && part.endsWith('`') && part.length > 1
    ? `\\fB${roffText(part.slice(1, -1))}\\fR` : roffText(part).replace(/\*([^*]+)\*/g, '\\fI$1\\fR')).join('')
}

/** A tagged paragraph: the term in bold, the text below it indented. */
function item(term: string, text: string): string {
  return `.TP\n\\fB${roffText(term)}\\fR\n${text ? roffText(text) : '\\&'}\n`
}

function header(title: string, version: string): string {
  // No date: the page is the same whenever it is generated from the same program.
  return `.TH ${title.toUpperCase()} 1 "" "extfs ${version}" "extfs manual"\n`
}

function section(name: string, body: string): string {
  return body ? `.SH ${name}\n${body}` : ''
}

/** The commands that have a page of their own: the program's visible ones (not commander's `help`). */
export function pageCommands(program: Command): Command[] {
  return program.createHelp().visibleCommands(program).filter((c) => program.commands.includes(c))
}

function optionsSection(help: Help, cmd: Command): string {
  return help.visibleOptions(cmd).map((o) => item(help.optionTerm(o), help.optionDescription(o))).join('')
}

/** extfs-<command>(1). */
function commandPage(program: Command, cmd: Command, version: string): string {
  const help = cmd.createHelp()
  const name = `${program.name()}-${cmd.name()}`
  return header(name, version)
    + section('NAME', `${name} \\- ${roffText(help.commandDescription(cmd))}\n`)
    + section('SYNOPSIS', `${roffText(help.commandUsage(cmd))}\n`)
    + section('DESCRIPTION', `${roffText(help.commandDescription(cmd))}\n.PP\nThe same as \\fB${roffText(`${program.name()} ${cmd.name()} --help`)}\\fR prints; the full reference is docs/cli.md in extfs's source.\n`)
    + section('ARGUMENTS', help.visibleArguments(cmd).map((a) => item(help.argumentTerm(a), help.argumentDescription(a))).join(''))
    + section('OPTIONS', optionsSection(help, cmd))
    + section('EXIT STATUS', `0 on success, otherwise one of the codes listed in \\fB${program.name()}\\fR(1).\n`)
    + section('SEE ALSO', `.BR ${program.name()} (1)\n`)
}

/** extfs(1): the commands, the program's options, exit codes, environment and files. */
function overviewPage(program: Command, version: string, exitCodes: ExitCodeDoc[]): string {
  const help = program.createHelp()
  const pages = pageCommands(program).map((c) => `${program.name()}-${c.name()}`)
  return header(program.name(), version)
    + section('NAME', `${program.name()} \\- ${roffText(help.commandDescription(program))}\n`)
    + section('SYNOPSIS', `${roffText(help.commandUsage(program))}\n`)
    + section('DESCRIPTION', `${roffText(help.commandDescription(program))}\n.PP\nEach command has a page of its own, \\fB${program.name()}\\-\\fR\\fIcommand\\fR(1), with what \\fB${roffText(`${program.name()} <command> --help`)}\\fR prints. The full reference is docs/cli.md in extfs's source; running it every night: docs/operations.md.\n`)
    + section('COMMANDS', help.visibleCommands(program).map((c) => item(help.subcommandTerm(c), help.subcommandDescription(c))).join(''))
    + section('OPTIONS', optionsSection(help, program))
    + section('EXIT STATUS', exitCodes.map((e) => `.TP\n\\fB${e.code}\\fR (${e.name})\n${roffMarkdown(e.meaning)}\n`).join(''))
    + section('ENVIRONMENT', ENVIRONMENT.map(([k, v]) => `.TP\n\\fB${k}\\fR\n${roffMarkdown(v)}\n`).join(''))
    + section('FILES', FILES.map(([k, v]) => `.TP\n\\fI${roffText(k)}\\fR\n${roffMarkdown(v)}\n`).join(''))
    + section('SEE ALSO', [...pages.map((p) => `.BR ${p} (1),`), '.BR mount (8),', '.BR systemd.timer (5)'].join('\n') + '\n')
}

/** Every page: file name (`extfs.1`, `extfs-<command>.1`) to its roff text. */
export function manualPages(program: Command, exitCodes: ExitCodeDoc[]): Map<string, string> {
  const version = program.version() ?? ''
  const pages = new Map([[`${program.name()}.1`, overviewPage(program, version, exitCodes)]])
  for (const cmd of pageCommands(program)) pages.set(`${program.name()}-${cmd.name()}.1`, commandPage(program, cmd, version))
  return pages
}

// --- bash completion ---

/** The words a user types for an option: its long and short flags. */
function optionWords(help: Help, cmd: Command): string[] {
  return help.visibleOptions(cmd).flatMap((o) => [o.long, o.short]).filter((f): f is string => !!f)
}

/** A word list for bash, single-quoted (option names and choices hold no quote, checked). */
function words(list: string[]): string {
  for (const w of list) if (!/^[A-Za-z0-9_.,:=+\-]+$/.test(w)) throw new Error(`cannot complete the word ${JSON.stringify(w)}`)
  return `'${list.join(' ')}'`
}

/**
 * A bash completion script: `complete -F _extfs extfs`. Completes the command, each command's
 * visible options, and the choices of an option's value; anything else (arguments, other values)
 * falls back to file names (-o default), and the words after `backup ... --` to commands.
 */
export function bashCompletion(program: Command): string {
  const help = program.createHelp()
  const name = program.name()
  const fn = `_${name.replace(/[^A-Za-z0-9_]/g, '_')}`
  const perCommand: string[] = []
  const choices: string[] = []
  for (const cmd of pageCommands(program)) {
    const h = cmd.createHelp()
    perCommand.push(`    ${cmd.name()}) opts=${words(optionWords(h, cmd))} ;;`)
    for (const o of h.visibleOptions(cmd)) {
      if (!o.argChoices) continue
      const flags = [o.long, o.short].filter((f): f is string => !!f).map((f) => `'${cmd.name()} ${f}'`).join('|')
      choices.push(`    ${flags}) COMPREPLY=($(compgen -W ${words(o.argChoices)} -- "$cur")); return ;;`)
    }
  }
  return `# bash completion for ${name}: generated from its command definitions (scripts/gen-manual); do not edit.
${fn}() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
  local cmd='' opts i
  COMPREPLY=()
  # The command is the first word that is not an option (the program's own options take no value).
  for ((i = 1; i < COMP_CWORD; i++)); do
    [[ \${COMP_WORDS[i]} == -* ]] && continue
    cmd=\${COMP_WORDS[i]}
    break
  done
  if [[ -z $cmd ]]; then
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W ${words(optionWords(help, program))} -- "$cur"))
    else
      COMPREPLY=($(compgen -W ${words(help.visibleCommands(program).map((c) => c.name()))} -- "$cur"))
    fi
    return
  fi
  # After --, the words are a command to run (extfs backup ... -- tar ...): its name, then files.
  for ((i++; i < COMP_CWORD; i++)); do
    if [[ \${COMP_WORDS[i]} == -- ]]; then
      (( i == COMP_CWORD - 1 )) && COMPREPLY=($(compgen -c -- "$cur"))
      return
    fi
  done
  case "$cmd $prev" in
${choices.join('\n')}
  esac
  case $cmd in
${perCommand.join('\n')}
    *) return ;;
  esac
  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); fi
}
complete -o default -F ${fn} ${name}
`
}

/** Writes <outDir>/man1/*.1 and <outDir>/bash-completion/<name>; returns the files written. */
export function writeManual(program: Command, outDir: string): string[] {
  const exitCodes = exitCodeDocs(fs.readFileSync(EXIT_CODE_DOC, 'utf8'))
  const written: string[] = []
  const write = (file: string, text: string) => {
    fs.mkdirSync(path.dirname(file), { recursive: true })
    fs.writeFileSync(file, text)
    written.push(file)
  }
  for (const [file, text] of manualPages(program, exitCodes)) write(path.join(outDir, 'man1', file), text)
  write(path.join(outDir, 'bash-completion', program.name()), bashCompletion(program))
  return written
}
