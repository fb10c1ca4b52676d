//! The module rules of `docs/architecture.md`, enforced: the top-level modules of `src/` form
//! no import cycle, the configuration is a leaf, and no module imports one its "never" column
//! forbids. Reads the source text (every `crate::…` path outside comments and `#[cfg(test)]`
//! blocks); needs no build of the crate's internals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(module, modules it must never import, why)`, as in the "never" column of
/// `docs/architecture.md`.
const NEVER: &[(&str, &[&str], &str)] = &[
    ("config", &["*"], "the configuration is a leaf: everything reads it, it reads nothing"),
    ("engine", &["journal", "participant", "api", "executor", "server"], "the engine is pure"),
    ("participant", &["journal", "executor", "api", "server", "recovery"], "participants know only their contract"),
    ("journal", &["engine", "executor", "participant", "api", "server"], "the journal stores bytes, not sagas"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// Every top-level module named by a `crate::` path in `code`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The module graph: module → modules it imports, outside comments and test blocks.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        let mut code = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("#[cfg(test)]") {
                // `#[cfg(test)] mod name;` declares a test file (scanned as its own file); an
                // inline test module closes every file that has one.
                if lines.peek().is_some_and(|next| next.trim_end().ends_with(';')) {
                    lines.next();
                    continue;
                }
                break;
            }
            if trimmed.starts_with("//") {
                continue;
            }
            code.push_str(line.split("//").next().unwrap_or_default());
            code.push('\n');
        }
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imported(&code).into_iter().filter(|d| *d != module && d != "wal_format"));
    }
    graph
}

/// A path `from → … → from` through the graph, if one exists.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

/// No two top-level modules of `src/` import each other, directly or through others.
#[test]
fn top_level_modules_form_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() >= 15, "the scan found too few modules: {:?}", graph.keys());
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_through(&graph, m)).map(|c| c.join(" → ")).collect();
    assert!(cycles.is_empty(), "import cycles between modules:\n{}", cycles.join("\n"));
}

/// No module imports one its "never" column in `docs/architecture.md` forbids.
#[test]
fn no_module_imports_what_it_must_never_know() {
    let graph = graph();
    let mut broken = Vec::new();
    for (module, never, why) in NEVER {
        let deps = graph.get(*module).unwrap_or_else(|| panic!("module {module} not found in src/"));
        for dep in deps {
            if never.contains(&"*") || never.contains(&dep.as_str()) {
                broken.push(format!("{module} imports {dep} ({why})"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The scanner itself: `use crate::{a, b}` groups and inline paths both count, comments do not.
#[test]
fn the_scanner_reads_groups_and_inline_paths() {
    let found = imported("use crate::{engine, journal::Journal};\nlet x = crate::index::open();");
    assert_eq!(found, BTreeSet::from(["engine".to_owned(), "index".to_owned(), "journal".to_owned()]));
}
