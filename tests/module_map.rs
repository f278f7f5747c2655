//! The module map holds: imports run only down it, never in a circle.
//!
//! `src/lib.rs` lists the modules top to bottom and docs/architecture.md draws them; a module
//! may use what is below it, not what is above. Nothing in the compiler enforces that inside
//! one crate, so this test reads `src/` and follows every `crate::…` and `super::…` path (in
//! `use` items and in code; comments are skipped): between the top-level modules, and between
//! the sibling files of every folder, there must be no cycle. A failure names the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside the crate, e.g. `["grpc", "service"]`; the crate root is `[]`.
type ModPath = Vec<String>;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `src/grpc/service.rs` → `grpc::service`; `src/hub/mod.rs` → `hub`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The text without comments (line, block and doc comments) and without string literals, so
/// a path in a doc link or a message is not taken for an import.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal (not a lifetime): skip it so `'"'` does not open a string.
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                let end = bytes[i + 1..]
                    .iter()
                    .skip(1)
                    .position(|&b| b == b'\'')
                    .map_or(bytes.len(), |p| i + 2 + p + 1);
                i = end;
                out.push(' ');
            }
            b => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path that starts at `start` (the index just after `crate::` or `super::`), with brace
/// groups expanded: `{a::B, c::{D, E}}` gives `a::B`, `c::D`, `c::E`.
fn paths_at(code: &[u8], start: usize) -> Vec<Vec<String>> {
    fn walk(code: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.to_vec();
        loop {
            while code.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            if code.get(i) == Some(&b'{') {
                i += 1;
                loop {
                    i = walk(code, i, &path, out);
                    while code.get(i).is_some_and(u8::is_ascii_whitespace) {
                        i += 1;
                    }
                    match code.get(i) {
                        Some(b',') => i += 1,
                        Some(b'}') => return i + 1,
                        _ => return i,
                    }
                    while code.get(i).is_some_and(u8::is_ascii_whitespace) {
                        i += 1;
                    }
                    if code.get(i) == Some(&b'}') {
                        return i + 1;
                    }
                }
            }
            let begin = i;
            while code.get(i).copied().is_some_and(is_ident) {
                i += 1;
            }
            if begin == i {
                break;
            }
            path.push(String::from_utf8_lossy(&code[begin..i]).into_owned());
            if code.get(i..i + 2) == Some(b"::") {
                i += 2;
            } else {
                break;
            }
        }
        out.push(path);
        i
    }
    let mut out = Vec::new();
    walk(code, start, &[], &mut out);
    out
}

/// The inline modules of a file (`mod tests { … }`) as (first byte, last byte, name), so that a
/// `super::` inside one resolves from it, not from the file.
fn inline_modules(code: &[u8]) -> Vec<(usize, usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    let text = String::from_utf8_lossy(code);
    while let Some(offset) = text[from..].find("mod ") {
        let at = from + offset;
        from = at + 4;
        if at > 0 && is_ident(code[at - 1]) {
            continue;
        }
        let name_end = from
            + code[from..]
                .iter()
                .position(|&b| !is_ident(b))
                .unwrap_or(code.len() - from);
        let name = String::from_utf8_lossy(&code[from..name_end]).into_owned();
        let mut open = name_end;
        while code.get(open).is_some_and(u8::is_ascii_whitespace) {
            open += 1;
        }
        if name.is_empty() || code.get(open) != Some(&b'{') {
            continue;
        }
        let mut depth = 0usize;
        let mut close = open;
        for (i, &b) in code.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push((open, close, name));
    }
    found
}

/// The modules `module`'s code refers to, as the longest known module prefix of each path.
/// References from its inline modules count as the file's own.
fn references(module: &ModPath, code: &str, known: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let bytes = code.as_bytes();
    let inline = inline_modules(bytes);
    let mut found = BTreeSet::new();
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(offset) = code[from..].find(anchor) {
            let at = from + offset;
            from = at + anchor.len();
            if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b':') {
                continue;
            }
            let mut start = at + anchor.len();
            let root: ModPath = if anchor == "crate::" {
                Vec::new()
            } else {
                // The module this `super::` is written in, inline modules included; each
                // `super` climbs one level.
                let mut here = module.clone();
                here.extend(
                    inline
                        .iter()
                        .filter(|(open, close, _)| *open < at && at < *close)
                        .map(|(_, _, name)| name.clone()),
                );
                here.pop();
                while code[start..].starts_with("super::") {
                    here.pop();
                    start += "super::".len();
                }
                here
            };
            for path in paths_at(bytes, start) {
                let mut full = root.clone();
                full.extend(path);
                while !full.is_empty() && !known.contains(&full) {
                    full.pop();
                }
                if !full.is_empty() && &full != module {
                    found.insert(full);
                }
            }
        }
    }
    found
}

/// The groups of nodes of `edges` (each node's successors) that reach each other: the strongly
/// connected components with more than one node (Tarjan's algorithm), each sorted.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        circles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let at = self.index.len();
            self.index.insert(node, at);
            self.low.insert(node, at);
            self.stack.push(node);
            for next in self.edges.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let begin = self.stack.iter().rposition(|n| *n == node).unwrap_or(0);
                let mut group: Vec<String> = self.stack.drain(begin..).map(str::to_owned).collect();
                if group.len() > 1 {
                    group.sort();
                    self.circles.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        circles: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.circles
}

/// The modules in the order of `src/lib.rs`'s module table (`//! | [`name`] …` or
/// `//! | `name` …`), top first.
fn table_order(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.strip_prefix("//! | "))
        .filter_map(|cell| {
            let cell = cell.trim_start_matches('[').strip_prefix('`')?;
            let name: String = cell
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && cell[name.len()..].starts_with('`')).then_some(name)
        })
        .collect()
}

#[test]
fn imports_run_down_the_module_map_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let modules: Vec<(ModPath, String)> = files
        .iter()
        .filter(|file| !file.ends_with("main.rs"))
        .map(|file| {
            let text = std::fs::read_to_string(file).expect("a readable source file");
            (module_of(&src, file), code_only(&text))
        })
        .collect();
    let known: BTreeSet<ModPath> = modules.iter().map(|(module, _)| module.clone()).collect();

    // Each folder's children (the crate root's are the top-level modules): an edge between two
    // of them whenever a file in one's subtree refers to something in the other's.
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, code) in &modules {
        for target in references(module, code, &known) {
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // A reference to an ancestor (a child using its parent's items) is not between
            // siblings.
            if common >= module.len() || common >= target.len() {
                continue;
            }
            let parent = module[..common].to_vec();
            by_parent
                .entry(parent)
                .or_default()
                .entry(module[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    assert!(
        by_parent
            .get(&Vec::new())
            .is_some_and(|edges| edges.len() > 5),
        "the reader found almost no references between top-level modules: {by_parent:?}"
    );

    // The crate root's table lists every top-level module, and each uses only those below it.
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let order = table_order(&lib);
    let top: BTreeSet<&String> = known
        .iter()
        .filter(|module| module.len() == 1)
        .map(|module| &module[0])
        .collect();
    let listed: BTreeSet<&String> = order.iter().collect();
    assert_eq!(
        top, listed,
        "src/lib.rs's module table must list exactly the top-level modules"
    );
    let rank = |name: &str| order.iter().position(|m| m == name).unwrap_or(usize::MAX);
    let upward: Vec<String> = by_parent
        .get(&Vec::new())
        .into_iter()
        .flatten()
        .flat_map(|(from, targets)| {
            targets
                .iter()
                .filter(|to| rank(to) < rank(from))
                .map(move |to| format!("{from} → {to}"))
        })
        .collect();
    assert!(
        upward.is_empty(),
        "a module may use only modules below it in src/lib.rs's table; these point up:\n  {}",
        upward.join("\n  ")
    );

    let cycles: Vec<String> = by_parent
        .iter()
        .filter_map(|(parent, edges)| {
            let at = if parent.is_empty() {
                "the crate's top-level modules".to_owned()
            } else {
                format!("the children of `{}`", parent.join("::"))
            };
            let groups: Vec<String> = circles(edges)
                .iter()
                .map(|group| format!("{{{}}}", group.join(", ")))
                .collect();
            (!groups.is_empty()).then(|| format!("{at}: {}", groups.join(" ")))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "imports must run down the module map (src/lib.rs, docs/architecture.md); each group \
         below imports itself in a circle:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_reader_sees_braced_and_relative_imports() {
    let known: BTreeSet<ModPath> = [
        vec!["a".to_owned()],
        vec!["a".to_owned(), "x".to_owned()],
        vec!["a".to_owned(), "y".to_owned()],
        vec!["b".to_owned()],
        vec!["c".to_owned()],
    ]
    .into_iter()
    .collect();
    let code = code_only(
        "use crate::{b::{One, Two}, c};\n// crate::d in a comment\nuse super::y::Z;\nlet s = \"crate::e\";\n\
         mod tests { use super::super::a; use super::*; }",
    );
    let found = references(&vec!["a".to_owned(), "x".to_owned()], &code, &known);
    let found: Vec<String> = found.iter().map(|m| m.join("::")).collect();
    assert_eq!(found, ["a", "a::y", "b", "c"]);

    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned(), "d".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
        ("d".to_owned(), ["e".to_owned()].into()),
        ("e".to_owned(), ["d".to_owned()].into()),
        ("f".to_owned(), ["a".to_owned()].into()),
    ]
    .into();
    assert_eq!(circles(&edges), [vec!["d", "e"], vec!["a", "b", "c"]]);
}
