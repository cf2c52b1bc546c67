//! The library's files import each other in one direction only: no file of
//! `src/` reaches, through `use` or a `crate::`/`super::` path, a file that
//! reaches it back. Cycles are what let a facet call up into the vault that
//! calls it; this test names every cycle and the lines that close it.
//!
//! It reads the source as text, which is enough for this crate's style:
//! paths are resolved to the file that defines them, following `use`
//! re-exports (`crate::Error` is `src/error.rs`); `mod` declarations, test
//! modules and the binary (`src/main.rs`, `src/cli/`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One library file: its module path and what it imports.
struct File {
    module: Vec<String>,
    /// Names this module brings into scope with `use`: name → full path.
    imports: BTreeMap<String, Vec<String>>,
    /// Every path it mentions (from the crate root), with its line.
    paths: Vec<(Vec<String>, usize)>,
}

#[test]
fn no_file_of_src_imports_a_file_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let report = cycles(&src);
    assert!(
        report.is_empty(),
        "import cycles between files of src/:\n{report}"
    );
}

/// The checker itself: a cycle through a re-export, and one between a
/// parent calling `child::g()` and a child naming `super::A`, are found; a
/// one-way tree with re-exports is not.
#[test]
fn the_check_finds_cycles_and_only_cycles() {
    let tree = |files: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    };
    let one_way = tree(&[
        ("lib.rs", "mod a;\nmod b;\npub use a::A;\n"),
        (
            "a/mod.rs",
            "mod c;\npub use c::C;\npub struct A;\nfn f() { c::g() }\n",
        ),
        ("a/c.rs", "use crate::b::B;\npub struct C;\npub fn g() {}\n"),
        ("b.rs", "pub struct B;\n"),
    ]);
    assert_eq!(cycles(one_way.path()), "");
    let through_reexport = tree(&[
        (
            "lib.rs",
            "mod a;\nmod b;\npub use a::A;\npub(crate) use b::B;\n",
        ),
        ("a.rs", "use crate::{B, other::Thing};\npub struct A;\n"),
        ("b.rs", "pub struct B(crate::A);\n"),
    ]);
    let report = cycles(through_reexport.path());
    assert!(
        report.contains("a.rs:1 -> b.rs") && report.contains("b.rs:1 -> a.rs"),
        "{report}"
    );
    let parent_and_child = tree(&[
        ("lib.rs", "mod a;\n"),
        (
            "a/mod.rs",
            "mod c;\npub struct A;\nfn f() {\n    c::g();\n}\n",
        ),
        ("a/c.rs", "pub fn g() -> super::A {\n    super::A\n}\n"),
    ]);
    let report = cycles(parent_and_child.path());
    assert!(report.contains("a/mod.rs:4 -> a/c.rs"), "{report}");
}

/// Every cycle among the library files under `src`, with the lines that
/// close it; empty when there is none.
fn cycles(src: &Path) -> String {
    let files = library_files(src);
    let by_module: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|(path, file)| (file.module.clone(), path.clone()))
        .collect();
    let mut edges: BTreeMap<&PathBuf, BTreeMap<&PathBuf, usize>> = BTreeMap::new();
    for (path, file) in &files {
        for (target, line) in &file.paths {
            if let Some(to) = resolve(target, &files, &by_module)
                && to != path
            {
                edges.entry(path).or_default().entry(to).or_insert(*line);
            }
        }
    }
    let found = strongly_connected(&files.keys().collect::<Vec<_>>(), &edges);
    let mut report = String::new();
    for cycle in &found {
        report.push_str("cycle:\n");
        for from in cycle {
            for (to, line) in edges.get(from).into_iter().flatten() {
                if cycle.contains(to) {
                    report.push_str(&format!(
                        "  {}:{line} -> {}\n",
                        name(from, src),
                        name(to, src)
                    ));
                }
            }
        }
    }
    let total: usize = edges.values().map(BTreeMap::len).sum();
    println!(
        "{} files, {total} file-to-file imports, {} cycles",
        files.len(),
        found.len()
    );
    report
}

fn name(path: &Path, src: &Path) -> String {
    path.strip_prefix(src).unwrap_or(path).display().to_string()
}

/// Every `.rs` file of the library, parsed.
fn library_files(src: &Path) -> BTreeMap<PathBuf, File> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if path != src.join("cli") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && path != src.join("main.rs") {
                let module = module_of(&path, src);
                let text = std::fs::read_to_string(&path).expect("read source");
                out.insert(path, parse(module, &text));
            }
        }
    }
    out
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `["a", "b"]`; `src/lib.rs` is `[]`.
fn module_of(path: &Path, src: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

fn parse(module: Vec<String>, text: &str) -> File {
    let code = without_tests_and_comments(text);
    let mut imports = BTreeMap::new();
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    let mut offset = 0;
    while let Some(at) = find_use(rest) {
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        let tree = &rest[at..end];
        let line = line_of(&code, offset + at);
        let tree = tree.split_once("use ").map_or("", |(_, tree)| tree);
        for (alias, path) in expand(tree) {
            let path = absolute(&module, &path)
                .unwrap_or_else(|| [module.as_slice(), &segments(&path)].concat());
            paths.push((path.clone(), line));
            imports.insert(alias, path);
        }
        offset += end;
        rest = &rest[end..];
    }
    for (at, _) in code.match_indices("::") {
        let start = code[..at]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |s| s + 1);
        if start == at || code[start..at].contains("::") {
            continue; // not the first segment of its path
        }
        let end = code[start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| start + e);
        let text = &code[start..end];
        if text.ends_with(':') {
            continue; // `a::{b, c}` or `a::*`: the `use` parser has it
        }
        if text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            let path = absolute(&module, text)
                .unwrap_or_else(|| [module.as_slice(), &segments(text)].concat());
            paths.push((path, line_of(&code, start)));
        }
    }
    File {
        module,
        imports,
        paths,
    }
}

/// The start of the next `use` declaration (at a line start, any visibility).
fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("use ") {
        let at = from + i;
        let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = text[line_start..at].trim();
        let visibility = before.is_empty()
            || ["pub", "pub(crate)", "pub(super)"].contains(&before)
            || before.starts_with("pub(in ");
        if visibility {
            return Some(line_start + text[line_start..].find(|c: char| !c.is_whitespace())?);
        }
        from = at + 4;
    }
    None
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// The source without comments, string contents and `#[cfg(test)]` modules
/// (line breaks kept, so line numbers stay right).
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        let code = match trimmed.starts_with("//") {
            true => "",
            false => line.split(" // ").next().unwrap_or(line),
        };
        let mut in_string = false;
        for c in code.chars() {
            match c {
                '"' => in_string = !in_string,
                _ if in_string => continue,
                _ => {}
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

/// `a::{b, c::{self, d as e}}` → `[("b", "a::b"), ("c", "a::c"), ("e", "a::c::d")]`.
fn expand(tree: &str) -> Vec<(String, String)> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into("", &tree, &mut out);
    out
}

fn expand_into(prefix: &str, tree: &str, out: &mut Vec<(String, String)>) {
    for part in split_top(tree) {
        match part.find('{') {
            Some(open) => {
                let head = part[..open].trim_end_matches("::");
                let inner = &part[open + 1..part.len() - 1];
                expand_into(&join(prefix, head), inner, out);
            }
            None if part == "self" => {
                let alias = prefix.rsplit("::").next().unwrap_or(prefix);
                out.push((alias.to_owned(), prefix.to_owned()));
            }
            None if part.ends_with('*') => {}
            None => {
                let (path, alias) = part.split_once("as").unwrap_or((part, ""));
                let path = join(prefix, path);
                let alias = match alias {
                    "" => path.rsplit("::").next().unwrap_or(&path).to_owned(),
                    alias => alias.to_owned(),
                };
                out.push((alias, path));
            }
        }
    }
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top(tree: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn join(prefix: &str, rest: &str) -> String {
    match prefix {
        "" => rest.to_owned(),
        _ => format!("{prefix}::{rest}"),
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A `crate::`, `self::` or `super::` path as segments from the crate root;
/// `None` for any other path. Those are relative to `module`, which the
/// caller prepends: a child module or an imported name then resolves, and a
/// path into another crate resolves to the file itself.
fn absolute(module: &[String], path: &str) -> Option<Vec<String>> {
    let mut segments = path.split("::").filter(|s| !s.is_empty());
    let mut base: Vec<String> = match segments.next()? {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    for segment in segments {
        match segment {
            "super" => {
                base.pop()?;
            }
            s => base.push(s.to_owned()),
        }
    }
    Some(base)
}

/// The file that defines what `path` names: the deepest module file on it,
/// then, if the next segment is a name that module imports, where that
/// import leads.
fn resolve<'a>(
    path: &[String],
    files: &'a BTreeMap<PathBuf, File>,
    by_module: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a PathBuf> {
    let mut seen = BTreeSet::new();
    let mut path = path.to_vec();
    loop {
        let depth = (0..=path.len())
            .rev()
            .find(|&n| by_module.contains_key(&path[..n]))?;
        let file = &by_module[&path[..depth]];
        let next = path.get(depth);
        match next.and_then(|name| files[file].imports.get(name)) {
            Some(target) if seen.insert(path.clone()) => {
                let mut followed = target.clone();
                followed.extend_from_slice(&path[depth + 1..]);
                path = followed;
            }
            _ => return Some(file),
        }
    }
}

/// Tarjan's strongly connected components with more than one file.
fn strongly_connected<'a>(
    nodes: &[&'a PathBuf],
    edges: &BTreeMap<&'a PathBuf, BTreeMap<&'a PathBuf, usize>>,
) -> Vec<BTreeSet<&'a PathBuf>> {
    struct Walk<'a, 'e> {
        edges: &'e BTreeMap<&'a PathBuf, BTreeMap<&'a PathBuf, usize>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        out: Vec<BTreeSet<&'a PathBuf>>,
    }
    fn visit<'a>(walk: &mut Walk<'a, '_>, node: &'a PathBuf) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        let next: Vec<&'a PathBuf> = walk
            .edges
            .get(node)
            .map(|to| to.keys().copied().collect())
            .unwrap_or_default();
        for to in next {
            if !walk.index.contains_key(to) {
                visit(walk, to);
                let low = walk.low[node].min(walk.low[to]);
                walk.low.insert(node, low);
            } else if walk.on_stack.contains(to) {
                let low = walk.low[node].min(walk.index[to]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                component.insert(top);
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                walk.out.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &node in nodes {
        if !walk.index.contains_key(node) {
            visit(&mut walk, node);
        }
    }
    walk.out
}
