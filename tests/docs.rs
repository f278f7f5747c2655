//! The documentation's links: every relative link in README.md and docs/*.md resolves. A link
//! names a file or directory of the repository that exists; a `#anchor` (alone, or after a
//! markdown file) names a heading of that file under GitHub's slug rules. Web links are not
//! followed (that would make the suite depend on the network). Only std: the check is simple
//! enough not to need a markdown parser, and it must not pull new dependencies into the crate.
//!
//! What it does not check: the code examples (web/scripts/readme-examples.mjs extracts the
//! TypeScript ones for `npm run typecheck`; tests/cli.rs runs the tour).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

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
