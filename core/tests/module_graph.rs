//! Core's modules depend on each other one way only. Between two sibling
//! modules (two folders or files under `src/`, or two files in one folder)
//! paths run in one direction, so each module can be read, tested and
//! changed knowing only what is below it, and a shared type goes in a leaf
//! module rather than wherever it was first needed.
//!
//! This reads every `crate::`, `super::` and `self::` path in core's source
//! (in `use` trees, in code and in serde's attribute strings), resolves it
//! to the module that holds it, and fails naming any cycle and the paths
//! that close it. A parent and its own children may use each other (the
//! parent is their namespace); test code is left out, since a test may take
//! its fixtures from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// A module's path below the crate root: `["privacy", "release"]`.
type Module = Vec<String>;

/// Sibling modules under one parent, and why one depends on the other.
type Siblings = BTreeMap<(String, String), Vec<String>>;

#[test]
fn sibling_modules_depend_on_each_other_one_way() {
    let graph = sibling_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));

    // The reader sees what it should: plain, grouped and relative paths.
    for (parent, from, to) in [
        ("", "pool", "stats"),
        ("", "disclosure", "models"),
        ("models", "cox", "fit"),
        ("privacy", "release", "glm"),
    ] {
        let edges = &graph[parent];
        assert!(
            edges.contains_key(&(from.to_string(), to.to_string())),
            "the module graph lost {parent}::{from} -> {parent}::{to}; is the path reader broken?"
        );
    }

    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(parent, edges)| cycles(edges).into_iter().map(move |c| (parent, edges, c)))
        .map(|(parent, edges, cycle)| describe(parent, edges, &cycle))
        .collect();
    assert!(
        cycles.is_empty(),
        "core's modules import each other in a circle; move what both sides need into a \
         module below them:\n{}",
        cycles.join("\n")
    );
}

/// For each parent module (`""` for the crate root), which of its children
/// depends on which, with the paths that say so.
fn sibling_graph(src: &Path) -> BTreeMap<String, Siblings> {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let test_only = test_only_modules(&files);
    let reexports = root_reexports(&files);

    let mut graph: BTreeMap<String, Siblings> = BTreeMap::new();
    for (from, text) in &files {
        if test_only.iter().any(|t| from.starts_with(t)) {
            continue;
        }
        for path in paths(&without_tests_or_comments(text)) {
            let Some(to) = resolve(from, &path, &modules, &reexports) else {
                continue;
            };
            // A module and its ancestors or descendants: not siblings.
            if from.starts_with(&to) || to.starts_with(from) {
                continue;
            }
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            let parent = from[..common].join("::");
            let pair = (from[common].clone(), to[common].clone());
            let why = format!("{} uses {path}", from.join("::"));
            let witnesses = graph.entry(parent).or_default().entry(pair).or_default();
            if !witnesses.contains(&why) {
                witnesses.push(why);
            }
        }
    }
    graph
}

/// Every `.rs` file under `dir` with its module path and text.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(Module, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = relative
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            out.push((module, fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Modules declared under `#[cfg(test)]` (`mod tests;`, fixtures).
fn test_only_modules(files: &[(Module, String)]) -> Vec<Module> {
    let mut out = Vec::new();
    for (module, text) in files {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            let declared = pair[1]
                .trim_start_matches("pub(crate) ")
                .strip_prefix("mod ")
                .and_then(|d| d.strip_suffix(';'));
            if let (true, Some(name)) = (pair[0] == "#[cfg(test)]", declared) {
                out.push([module.clone(), vec![name.to_string()]].concat());
            }
        }
    }
    out
}

/// The crate root's `pub use m::{A, B};`: `A` and `B` live in `m`.
fn root_reexports(files: &[(Module, String)]) -> BTreeMap<String, Module> {
    let (_, lib) = files.iter().find(|(m, _)| m.is_empty()).unwrap();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(tree) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        for path in expand(tree) {
            let segments: Vec<&str> = path.split("::").collect();
            let module = segments[..segments.len() - 1].iter().map(|s| s.to_string());
            out.insert(segments[segments.len() - 1].to_string(), module.collect());
        }
    }
    out
}

/// The text with comment lines and the `#[cfg(test)] mod tests { .. }`
/// block (always a file's last item) taken out.
fn without_tests_or_comments(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_end().ends_with("mod tests {"))
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate`, `super` or `self`, use trees
/// expanded.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            out.extend(expand(&code[i..]));
        }
    }
    out
}

/// The paths a use tree (or a path in code) names:
/// `models::{correlation, cox::Ties}` is `models::correlation` and
/// `models::cox::Ties`. Reading stops where the path does.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim_start();
    let end = tree
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(tree.len());
    let (head, rest) = tree.split_at(end);
    let Some(rest) = rest.trim_start().strip_prefix("::") else {
        return vec![head.to_string()];
    };
    let tails = match rest.trim_start().strip_prefix('{') {
        Some(group) => group_items(group).into_iter().flat_map(expand).collect(),
        None => expand(rest),
    };
    let join = |tail: String| match tail.as_str() {
        "self" => head.to_string(),
        _ => format!("{head}::{tail}"),
    };
    tails.into_iter().map(join).collect()
}

/// The comma-separated items of a `{ .. }` group, up to its closing brace.
fn group_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.retain(|item| !item.trim().is_empty());
    items
}

/// The module that holds what `path`, written in `from`, names.
fn resolve(
    from: &Module,
    path: &str,
    modules: &BTreeSet<Module>,
    reexports: &BTreeMap<String, Module>,
) -> Option<Module> {
    let mut segments = path.split("::").peekable();
    let mut module = match segments.next()? {
        "crate" => Vec::new(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        "self" => from.clone(),
        _ => return None,
    };
    while segments.next_if_eq(&"super").is_some() {
        module.pop();
    }
    if module.is_empty() {
        if let Some(home) = segments.peek().and_then(|name| reexports.get(*name)) {
            return Some(home.clone());
        }
    }
    for segment in segments {
        module.push(segment.to_string());
        if !modules.contains(&module) {
            module.pop();
            break;
        }
    }
    Some(module)
}

/// Each cycle a depth-first walk closes, as the siblings along it.
fn cycles(edges: &Siblings) -> Vec<Vec<String>> {
    fn walk<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            out.push(stack[at..].iter().map(|n| n.to_string()).collect());
            return;
        }
        if !done.insert(node) {
            return;
        }
        stack.push(node);
        for to in next.get(node).into_iter().flatten() {
            walk(to, next, stack, done, out);
        }
        stack.pop();
    }
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for node in next.keys() {
        walk(node, &next, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

/// A cycle as the failure states it: the modules around it, then each
/// step's first path.
fn describe(parent: &str, edges: &Siblings, cycle: &[String]) -> String {
    let name = |m: &str| {
        if parent.is_empty() {
            m.to_string()
        } else {
            format!("{parent}::{m}")
        }
    };
    let mut text: Vec<String> = cycle.iter().map(|m| name(m)).collect();
    text.push(name(&cycle[0]));
    let mut out = format!("  {}", text.join(" -> "));
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        out += &format!("\n      {}", edges[&(from.clone(), to.clone())][0]);
    }
    out
}
