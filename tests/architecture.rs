//! The shape of `src/`: no import circles between top-level modules, and every import
//! points down the layers of docs/ARCHITECTURE.md. Reads the source, so it needs no
//! database; it fails naming the offending files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may use its own layer's modules and those below;
/// never one above. Every top-level module of `src/` must be listed.
const LAYERS: &[&[&str]] = &[
    &["foundation"],
    &["db"],
    &["read"],
    &["cluster"],
    &["write"],
    &["requests", "ops"],
    &["state"],
    &["edge"],
    &["app", "shutdown"],
    &["supervisor", "bench"],
    &["cli"],
];

/// Top-level module of a file under `src/` (`src/db/mod.rs` → `db`, `src/app.rs` → `app`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without `//` comments (doc links name modules without importing them).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string (a URL) is kept: only a leading one starts a comment.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names as `crate::x` or `crate::{x, y::z}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue; // `pgchat_crate::` or a macro's `$crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level names of the group, skipping nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// Module → the modules it uses, with a file that shows each use.
fn graph() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_paths(&code_of(&text)) {
            if used != module {
                uses.entry(used).or_insert_with(|| file.clone());
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A cycle through `from`, as a path of modules, if there is one.
fn cycle_from(
    graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
    from: &str,
) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeMap<String, PathBuf>>,
        target: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, target, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_two_top_level_modules_import_each_other_even_through_others() {
    let graph = graph();
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|path| path.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn every_import_points_down_the_layers() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        let Some(own) = layer_of(module) else {
            wrong.push(format!("{module} is in no layer: add it to LAYERS"));
            continue;
        };
        for (used, file) in uses {
            match layer_of(used) {
                Some(layer) if layer <= own => {}
                Some(_) => wrong.push(format!(
                    "{module} uses {used}, a layer above it ({})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{module} uses {used}, which is in no layer ({})",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_finds_grouped_and_nested_imports() {
    let code = "use crate::{hub::Hub, store, db::{self, Tx}};\nlet x = crate::metrics::X;\n$crate::not_this";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["db", "hub", "metrics", "store"]);
    assert!(crate_paths(&code_of("// crate::commented")).is_empty());
}

/// How deep a file's module sits below the crate root (`src/app.rs` and `src/db/mod.rs`
/// 1, `src/db/lease.rs` 2, `src/foundation/endpoint/tls.rs` 3).
fn depth_of(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).expect("under src");
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The longest run of leading `super::` in a path of `code`.
fn deepest_super(code: &str) -> usize {
    let mut deepest = 0;
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let mut n = 0;
        let mut at = &rest[i..];
        while let Some(after) = at.strip_prefix("super::") {
            n += 1;
            at = after;
        }
        deepest = deepest.max(n);
        rest = &rest[i + "super::".len() * n..];
    }
    deepest
}

/// The graph sees `crate::` paths only, so a path that climbs to the crate root through
/// `super::` (or names it with `crate::*`) would hide an import from it: none may.
/// A file's `#[cfg(test)]` module is left out (its `super::` is the file itself).
#[test]
fn no_path_reaches_the_crate_root_unseen() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        if module_of(&src, &file).is_none() {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code = code_of(&text);
        let code = code.split("#[cfg(test)]").next().unwrap_or("");
        if deepest_super(code) >= depth_of(&src, &file) {
            wrong.push(format!(
                "{}: super:: reaches the crate root: use crate::",
                file.display()
            ));
        }
        if code.contains("crate::*") || code.contains("crate::{self") {
            wrong.push(format!(
                "{}: a glob or self import of the crate",
                file.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_layer_names_a_module_and_the_graph_sees_them_all() {
    let graph = graph();
    assert!(graph.len() >= 10, "only {} modules found", graph.len());
    let stale: Vec<&str> = LAYERS
        .iter()
        .flat_map(|l| l.iter().copied())
        .filter(|m| !graph.contains_key(*m))
        .collect();
    assert!(
        stale.is_empty(),
        "LAYERS names modules that do not exist: {stale:?}"
    );
    let src = Path::new("/src");
    assert_eq!(depth_of(src, Path::new("/src/app.rs")), 1);
    assert_eq!(depth_of(src, Path::new("/src/db/mod.rs")), 1);
    assert_eq!(
        depth_of(src, Path::new("/src/foundation/endpoint/tls.rs")),
        3
    );
    assert_eq!(deepest_super("use super::super::edge; use super::x;"), 2);
}
