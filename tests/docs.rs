//! The documentation in README.md and docs/*.md, checked as far as a test can without a
//! network: every relative link resolves (a file or directory of the repository that exists;
//! a `#anchor`, alone or after a markdown file, names a heading of that file under GitHub's
//! slug rules; web links are not followed), every shell example parses (`bash -n`) and gives
//! `notify-backbone` only flags its subcommand has, and every Python example parses. Only std:
//! the checks are simple enough not to need a markdown or shell parser, and they must not pull
//! new dependencies into the crate.
//!
//! What it does not check: the TypeScript examples (web/scripts/readme-examples.mjs extracts
//! them for `npm run typecheck`), the tour's behaviour (tests/cli.rs runs it), `notify-bench`'s
//! flags (another crate's binary), and the Rust fragment, which needs a program around it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_notify-backbone");

/// The repository's root, where README.md is.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files whose links are checked: README.md and every docs/*.md, by their path
/// relative to the root.
fn documents() -> BTreeMap<PathBuf, String> {
    let root = root();
    let mut paths = vec![PathBuf::from("README.md")];
    let mut guides: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|entry| PathBuf::from("docs").join(entry.expect("a docs/ entry").file_name()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    guides.sort();
    paths.extend(guides);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(root.join(&path))
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            (path, text)
        })
        .collect()
}

/// GitHub's anchor for a heading's text: the rendered text (no inline code ticks, link
/// targets or escapes), lower-cased, with everything but letters, digits, spaces, `-` and `_`
/// removed and each space turned into `-`.
fn slug(heading: &str) -> String {
    let rendered = render_inline(heading);
    rendered
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// A heading's text as GitHub renders it: `[text](target)` becomes `text`, `\*` becomes `*`,
/// and the ticks of inline code go (their content stays).
fn render_inline(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '`' => {}
            ']' if chars.peek() == Some(&'(') => {
                // Skip the link's target.
                for c in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                }
            }
            '[' => {}
            c => out.push(c),
        }
    }
    out
}

/// The anchors a markdown file's headings make, with GitHub's `-1`, `-2`… for repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim_end_matches('#'));
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The lines outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fence: Option<&str> = None;
    text.lines().enumerate().filter_map(move |(n, line)| {
        let trimmed = line.trim_start();
        match fence {
            Some(open) => {
                if trimmed.starts_with(open) && trimmed.trim_start_matches(open).trim().is_empty() {
                    fence = None;
                }
                None
            }
            None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                fence = Some(&trimmed[..3]);
                None
            }
            None => Some((n + 1, line)),
        }
    })
}

/// The targets of a line's inline links `[text](target)`, outside inline code spans.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b']' if !in_code && bytes.get(i + 1) == Some(&b'(') => {
                if let Some(len) = line[i + 2..].find(')') {
                    let inside = &line[i + 2..i + 2 + len];
                    // `[text](target "title")`: the target is the first word.
                    let target = inside.split_whitespace().next().unwrap_or("");
                    targets.push(target.trim_matches(['<', '>']).to_owned());
                    i += 2 + len;
                }
            }
            _ => {}
        }
        i += 1;
    }
    targets
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs out of the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every broken relative link in `documents` (paths relative to `root`), as
/// `file:line: link: why`. Markdown files among the documents are read from the map, so a test
/// can give files that do not exist on disk; other targets must exist under `root`.
fn broken_links(root: &Path, documents: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut headings: BTreeMap<PathBuf, BTreeSet<String>> = documents
        .iter()
        .map(|(path, text)| (path.clone(), anchors(text)))
        .collect();
    let mut broken = Vec::new();
    for (path, text) in documents {
        let dir = path.parent().unwrap_or(Path::new(""));
        for (line_number, line) in prose_lines(text) {
            for link in link_targets(line) {
                if link.is_empty() || link.contains("://") || link.starts_with("mailto:") {
                    continue;
                }
                let mut report = |why: String| {
                    broken.push(format!("{}:{line_number}: {link}: {why}", path.display()));
                };
                let (file, anchor) = match link.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (link.as_str(), None),
                };
                let target = if file.is_empty() {
                    path.clone()
                } else {
                    match normalize(&dir.join(file)) {
                        Some(target) => target,
                        None => {
                            report("points outside the repository".into());
                            continue;
                        }
                    }
                };
                if !documents.contains_key(&target) && !root.join(&target).exists() {
                    report(format!("{} does not exist", target.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if target.extension().is_none_or(|ext| ext != "md") {
                    continue; // e.g. a line anchor into source code: GitHub's, not a heading
                }
                let known = headings.entry(target.clone()).or_insert_with(|| {
                    std::fs::read_to_string(root.join(&target))
                        .map(|text| anchors(&text))
                        .unwrap_or_default()
                });
                if !known.contains(anchor) {
                    report(format!("{} has no heading #{anchor}", target.display()));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_readme_and_the_guides_resolves() {
    let documents = documents();
    assert!(
        documents.len() > 1,
        "docs/ has no guides: {:?}",
        documents.keys()
    );
    let broken = broken_links(&root(), &documents);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn a_missing_file_or_heading_is_reported_with_its_file_and_line() {
    let documents = BTreeMap::from([
        (
            PathBuf::from("README.md"),
            "# Top\n\nSee [the guide](docs/guide.md#second-part) and [gone](docs/gone.md).\n\
             ```sh\n[not a link](nowhere.md)\n```\n[no such part](#bottom) and [up](#top)\n"
                .to_owned(),
        ),
        (
            PathBuf::from("docs/guide.md"),
            "# Guide\n## Second part\nBack to [the top](../README.md#top), [out](../../x.md), \
             `[code](nowhere.md)`, [a typo](../README.md#tpo), [web](https://example.com/x.md)\n"
                .to_owned(),
        ),
    ]);
    let broken = broken_links(Path::new("/nonexistent-root"), &documents);
    assert_eq!(
        broken,
        [
            "README.md:3: docs/gone.md: docs/gone.md does not exist",
            "README.md:7: #bottom: README.md has no heading #bottom",
            "docs/guide.md:3: ../../x.md: points outside the repository",
            "docs/guide.md:3: ../README.md#tpo: README.md has no heading #tpo",
        ]
    );
}

#[test]
fn anchors_follow_githubs_slugs() {
    assert_eq!(
        slug("Untyped events and `--strict-schema`"),
        "untyped-events-and---strict-schema"
    );
    assert_eq!(
        slug(r"quota.\* (user-service, shape B)"),
        "quota-user-service-shape-b"
    );
    assert_eq!(slug("History: `ListEvents`"), "history-listevents");
    assert_eq!(
        slug("Consoles: React and React Query"),
        "consoles-react-and-react-query"
    );
    assert_eq!(slug("See [the guide](x.md) now"), "see-the-guide-now");
    let repeated = anchors("# Notes\n## Notes\n```\n# not a heading\n```\n### Notes\n");
    assert_eq!(
        repeated,
        BTreeSet::from(["notes".into(), "notes-1".into(), "notes-2".into()])
    );
}

/// The fenced code blocks of a markdown text: (language, line of the opening fence, code).
fn code_blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        if let Some((_, _, code)) = open.as_mut() {
            if line.trim_end() == "```" {
                blocks.extend(open.take());
            } else {
                code.push_str(line);
                code.push('\n');
            }
        } else if let Some(language) = line.strip_prefix("```") {
            open = Some((language.trim().to_owned(), n + 1, String::new()));
        }
    }
    blocks
}

/// Runs `program args` with `input` on its standard input: `Err` with its stderr unless it
/// succeeds. A program that cannot be started fails the test, never skips it.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input.as_bytes())
        .expect("the program reads its input");
    let output = child.wait_with_output().expect("the program ends");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// A shell example's script: a `console` block's `$ ` lines, a `sh` block whole.
fn script_of(language: &str, code: &str) -> Option<String> {
    match language {
        "sh" | "bash" | "shell" => Some(code.to_owned()),
        "console" => Some(
            code.lines()
                .filter_map(|line| line.strip_prefix("$ "))
                .map(|line| format!("{line}\n"))
                .collect(),
        ),
        _ => None,
    }
}

/// The words of one shell command line with quotes removed, split into commands at `|`, `;`,
/// `&` and `&&`/`||`, comments dropped, and each `$(…)` a command of its own. Crude (no
/// escapes inside quotes, no here-documents), which is all the guides' examples need.
fn commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut commands = Vec::new();
    let mut pending: Vec<String> = joined.lines().map(str::to_owned).collect();
    while let Some(line) = pending.pop() {
        let (mut words, mut word) = (Vec::new(), None::<String>);
        let mut chars = line.chars().peekable();
        let mut quote = None::<char>;
        let end_word = |words: &mut Vec<String>, word: &mut Option<String>| {
            words.extend(word.take());
        };
        while let Some(c) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some('\''), c) => word.get_or_insert_default().push(c),
                (_, '$') if chars.peek() == Some(&'(') => {
                    chars.next();
                    let (mut depth, mut inner) = (1, String::new());
                    for c in chars.by_ref() {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        if depth == 0 {
                            break;
                        }
                        inner.push(c);
                    }
                    pending.push(inner);
                    word.get_or_insert_default().push_str("SUBSTITUTED");
                }
                (Some(_), c) => word.get_or_insert_default().push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    word.get_or_insert_default();
                }
                (None, '#') if word.is_none() => break,
                (None, c) if c.is_whitespace() => end_word(&mut words, &mut word),
                (None, '|' | ';' | '&') => {
                    end_word(&mut words, &mut word);
                    commands.push(std::mem::take(&mut words));
                }
                (None, c) => word.get_or_insert_default().push(c),
            }
        }
        end_word(&mut words, &mut word);
        commands.push(words);
    }
    commands.retain(|words| !words.is_empty());
    commands
}

/// The variables a script assigns (`name='value'`), for `$name` in later commands.
fn assignments(script: &str) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    for words in commands(script) {
        for word in words {
            if let Some((name, value)) = word.split_once('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                let value = value.split_whitespace().map(str::to_owned).collect();
                found.insert(name.to_owned(), value);
            }
        }
    }
    found
}

/// The arguments of an invocation of this binary, directly or through `cargo run … --`, with
/// `$name`s the script assigned put in; `None` for any other command.
fn invocation(words: &[String], variables: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    let start = words
        .iter()
        .position(|word| !word.contains('=') || word.starts_with('-'))?;
    let words = &words[start..];
    let args: &[String] = if words[0] == "notify-backbone" || words[0].ends_with("/notify-backbone")
    {
        &words[1..]
    } else if words.len() > 1 && words[0] == "cargo" && words[1] == "run" {
        let dashes = words.iter().position(|word| word == "--")?;
        &words[dashes + 1..]
    } else {
        return None;
    };
    Some(
        args.iter()
            .flat_map(
                |word| match word.strip_prefix('$').and_then(|name| variables.get(name)) {
                    Some(value) => value.clone(),
                    None => vec![word.clone()],
                },
            )
            .collect(),
    )
}

/// The subcommand path of `args` (`["inbox", "preferences", "set"]`): its leading words as
/// long as each is a subcommand of the path before it, as `subcommands` (of a path) says.
fn subcommand_path(
    args: &[String],
    mut subcommands: impl FnMut(&[String]) -> BTreeSet<String>,
) -> Vec<String> {
    let mut path = Vec::new();
    for arg in args {
        if !subcommands(&path).contains(arg) {
            break;
        }
        path.push(arg.clone());
    }
    path
}

/// The flags among `args`, without their `=value`.
fn flags_of(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|arg| arg.starts_with("--") && arg.len() > 2)
        .map(|arg| arg.split('=').next().unwrap_or(arg).to_owned())
        .collect()
}

/// The subcommands a `--help` text lists under `Commands:` (clap's layout: two spaces, the
/// name, its description), `help` among them.
fn listed_subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|line| line.trim_end() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `help` (a `--help` text) lists `flag` as an option.
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn shell_examples_parse_and_give_the_binary_only_flags_it_has() {
    let mut helps: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut help_of = |path: &[String]| -> String {
        helps
            .entry(path.to_vec())
            .or_insert_with(|| {
                let output = Command::new(BIN)
                    .args(path)
                    .arg("--help")
                    .output()
                    .expect("the binary runs");
                assert!(output.status.success(), "{path:?} --help: {output:?}");
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .clone()
    };
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in documents() {
        for (language, line, code) in code_blocks(&text) {
            let Some(script) = script_of(&language, &code) else {
                continue;
            };
            let at = format!("{}:{line}", path.display());
            if let Err(error) = run_with_input("bash", &["-n"], &script) {
                problems.push(format!(
                    "{at}: the {language} example does not parse: {error}"
                ));
            }
            let variables = assignments(&script);
            for words in commands(&script) {
                let Some(args) = invocation(&words, &variables) else {
                    continue;
                };
                checked += 1;
                let subcommand = subcommand_path(&args, |path| listed_subcommands(&help_of(path)));
                let help = help_of(&subcommand);
                for flag in flags_of(&args) {
                    if !lists_flag(&help, &flag) {
                        let command = ["notify-backbone".to_owned()]
                            .into_iter()
                            .chain(subcommand.iter().cloned())
                            .collect::<Vec<_>>()
                            .join(" ");
                        problems.push(format!("{at}: `{command}` has no {flag}"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} invocations found: is the extraction broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn python_examples_parse() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, text) in documents() {
        for (language, line, code) in code_blocks(&text) {
            if language != "python" {
                continue;
            }
            checked += 1;
            let parse = "import ast, sys; ast.parse(sys.stdin.read())";
            if let Err(error) = run_with_input("python3", &["-c", parse], &code) {
                problems.push(format!("{}:{line}: {error}", path.display()));
            }
        }
    }
    assert!(checked > 0, "no python example found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_shell_check_finds_invocations_and_their_flags() {
    let script = "names='--stream a.journal --ingest-queue a.ingest'\n\
                  export NOTIFY_TOKEN=$(cargo run -q --release -- token --sub u1) # a comment\n\
                  cargo run --release -- serve --dev $names --listen=127.0.0.1:1 &\n\
                  notify-backbone dead-letters list --routing-key 'billing.#' | head\n\
                  notify-backbone inbox mark read e1 --admin; notify-backbone inbox preferences set --file p.json\n\
                  grpcurl -plaintext 127.0.0.1:50051 list\n";
    let variables = assignments(script);
    // The binary's tree, as its `--help` texts would list it.
    let subcommands = |path: &[String]| -> BTreeSet<String> {
        let names: &[&str] = match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => &["serve", "dead-letters", "inbox", "token", "help"],
            ["dead-letters"] => &["list", "replay", "drop", "help"],
            ["inbox"] => &["list", "mark", "preferences", "help"],
            ["inbox", "preferences"] => &["set", "help"],
            _ => &[],
        };
        names.iter().map(|name| name.to_string()).collect()
    };
    let mut found: Vec<_> = commands(script)
        .iter()
        .filter_map(|words| invocation(words, &variables))
        .map(|args| (subcommand_path(&args, subcommands), flags_of(&args)))
        .collect();
    found.sort();
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        [
            (
                strings(&["dead-letters", "list"]),
                strings(&["--routing-key"])
            ),
            (strings(&["inbox", "mark"]), strings(&["--admin"])),
            (
                strings(&["inbox", "preferences", "set"]),
                strings(&["--file"])
            ),
            (
                strings(&["serve"]),
                strings(&["--dev", "--stream", "--ingest-queue", "--listen"])
            ),
            (strings(&["token"]), strings(&["--sub"])),
        ]
    );
    let help = "Usage: x\n\nCommands:\n  list    Show them\n          wrapped\n  help    Print\n\n\
                Options:\n  --all\n";
    assert_eq!(
        listed_subcommands(help),
        BTreeSet::from(["list".into(), "help".into()])
    );
    assert!(lists_flag("  --sub <SUB>\n", "--sub"));
    assert!(!lists_flag("  --sub-user <SUB>\n", "--sub"));
}
