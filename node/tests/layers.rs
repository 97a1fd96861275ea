//! The layers of `node/src` (ARCHITECTURE.md, "Layers"): imports point one way, from the
//! tasks and the edge down through routing, owners and the cluster core to the mesh and
//! the leaves; nothing below imports what is above.
//!
//! Reads the sources as text (no compiler involved), maps every file to its top-level
//! module, collects the `crate::…` paths of its non-test code (use statements, grouped
//! `use crate::{a, b}`, inline paths, `super::` that climbs to the crate root) and checks
//! them against [`LAYERS`]. Also: no import cycle between top-level modules, and no file
//! over [`LINES_MAX`] lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, top to bottom: a module may import modules of lower layers only. Keep in
/// step with ARCHITECTURE.md. `lib` stands for `lib.rs` and what it defines or re-exports
/// (`crate::Shared` is `lib`, `crate::shared::Shared` is `shared`).
const LAYERS: &[&[&str]] = &[
    // The crate root and the binary: start a node, accept connections.
    &["lib", "main"],
    // Tasks that drive a node: control-plane follower, draining, the mesh link manager.
    &["membership", "drain", "links"],
    // Client-facing termination: WebSocket and HTTP API.
    &["edge"],
    // The cluster core's shell: view changes, resyncs, fencing, the links' frames.
    &["rebalance"],
    // Routing between edges, owners and links.
    &["route"],
    // The node-wide state every task and handler holds.
    &["shared"],
    // Apps served by the node and their runtime state.
    &["app"],
    // One app's local subscribers, its owned channels, its webhooks.
    &["hub", "owner", "webhooks"],
    // The cluster as one node sees it, without I/O.
    &["cluster"],
    // Links between nodes: transports, frames, TLS, the table of live links.
    &["mesh"],
    // Leaves: settings, metrics, a connection's send queue, the frames the node writes.
    &["config", "telemetry", "outbox", "frames"],
];

/// Imports allowed between modules of one layer (importer, imported).
const SIDEWAYS: &[(&str, &str)] = &[
    // The binary starts the node through the library.
    ("main", "lib"),
    // The follower starts a drain when the control plane marks the node draining.
    ("membership", "drain"),
    // Owners raise webhooks.
    ("owner", "webhooks"),
    // A queue of text pushes frames it encodes, and counts the slow consumers it closes.
    ("outbox", "frames"),
    ("outbox", "telemetry"),
];

/// Past this a file is split by idea, so that each can be read in one sitting.
const LINES_MAX: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn imports_point_down_the_layers() {
    let files = read_sources(&src());
    let layer = layer_of();
    let sideways: BTreeSet<(&str, &str)> = SIDEWAYS.iter().copied().collect();
    let modules: BTreeSet<&str> = files.iter().map(|f| f.module.as_str()).collect();
    let mut errors = Vec::new();
    for module in &modules {
        if !layer.contains_key(module) {
            errors.push(format!(
                "module `{module}` is in no layer: add it to LAYERS (and ARCHITECTURE.md)"
            ));
        }
    }
    for name in layer.keys() {
        if !modules.contains(name) {
            errors.push(format!(
                "LAYERS names `{name}`, which node/src does not have"
            ));
        }
    }
    for file in &files {
        let Some(&from) = layer.get(file.module.as_str()) else {
            continue;
        };
        for import in &file.imports {
            let to_module = import.module.as_str();
            if to_module == file.module {
                continue;
            }
            let Some(&to) = layer.get(to_module) else {
                errors.push(format!(
                    "{}:{}: `{}` reaches `{to_module}`, which is in no layer",
                    file.path, import.line, import.text
                ));
                continue;
            };
            let allowed = to > from || sideways.contains(&(file.module.as_str(), to_module));
            if !allowed {
                let how = if to == from { "beside it" } else { "above it" };
                errors.push(format!(
                    "{}:{}: `{}` makes `{}` (layer {}) import `{to_module}` (layer {}), {how}",
                    file.path,
                    import.line,
                    import.text,
                    file.module,
                    from + 1,
                    to + 1
                ));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "imports against the layers of node/src (ARCHITECTURE.md, \"Layers\"):\n  {}",
        errors.join("\n  ")
    );
}

#[test]
fn no_import_cycle_between_modules() {
    let files = read_sources(&src());
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let edges = graph.entry(file.module.clone()).or_default();
        for import in &file.imports {
            if import.module != file.module {
                edges
                    .entry(import.module.clone())
                    .or_insert_with(|| format!("{}:{} `{}`", file.path, import.line, import.text));
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!("import cycle in node/src:\n  {}", steps.join("\n  "));
    }
}

#[test]
fn no_file_over_the_line_limit() {
    let files = read_sources(&src());
    let over: Vec<String> = files
        .iter()
        .filter(|f| f.lines > LINES_MAX)
        .map(|f| format!("{}: {} lines", f.path, f.lines))
        .collect();
    assert!(
        over.is_empty(),
        "files of node/src over {LINES_MAX} lines (split them by idea):\n  {}",
        over.join("\n  ")
    );
}

/// The scanner itself: what counts as an import and what does not.
#[test]
fn the_scanner_sees_every_form_of_path_and_skips_tests_and_comments() {
    let code = r##"
use crate::{a, b::{C, D}, self as _};
use crate::e::F;
// use crate::commented;
/* use crate::block /* nested crate::x */ */
fn f<'a>(x: &'a str) -> char {
    let _ = "crate::in_a_string";
    let _ = r#"crate::raw"#;
    crate::g::h(x);
    let _ = super::super::i::J;
    '{'
}
#[cfg(test)]
mod tests {
    use crate::test_only;
    fn brace() -> &'static str { "}" }
}
#[cfg(test)]
mod testkit;
pub(crate) fn k() { super::Top::new(); }
"##;
    let scanned = scan(code, &["m".to_owned(), "n".to_owned()], false);
    let found: Vec<&str> = scanned.imports.iter().map(|i| i.module.as_str()).collect();
    assert_eq!(found, ["a", "b", "lib", "e", "g", "i"]);
    assert_eq!(scanned.imports[4].line, 9);
    assert_eq!(scanned.imports[4].text, "crate::g::h");
    assert_eq!(scanned.test_modules, ["testkit"]);
    // In a top-level file `super` is the crate root.
    let top = scan("fn f() { super::Shared::new(); }", &["m".to_owned()], false);
    assert_eq!(top.imports[0].module, "Shared");
    // The crate root names its modules without `crate::` (other crates look the same, and
    // are dropped later for not being modules of node/src).
    let lib = scan(
        "pub use shared::Shared; fn f() { links::spawn(); }",
        &[],
        false,
    );
    let found: Vec<&str> = lib.imports.iter().map(|i| i.module.as_str()).collect();
    assert_eq!(found, ["shared", "links"]);
    // The binary reaches the library by its name; its own `crate` is not the library.
    let main = scan("use relaymesh_node::config; use crate::x;", &[], true);
    let found: Vec<&str> = main.imports.iter().map(|i| i.module.as_str()).collect();
    assert_eq!(found, ["config"]);
}

struct Import {
    /// The top-level module the path reaches (`lib` for the crate root's own items).
    module: String,
    line: usize,
    /// The path as written, for the message.
    text: String,
    /// Named without `crate::` in `lib.rs`: `std::…` and other crates look the same.
    bare: bool,
}

struct Source {
    /// Relative to the crate, e.g. `src/edge/ws/codec.rs`.
    path: String,
    module: String,
    lines: usize,
    imports: Vec<Import>,
}

fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut layer = BTreeMap::new();
    for (i, modules) in LAYERS.iter().enumerate() {
        for module in *modules {
            assert!(
                layer.insert(*module, i).is_none(),
                "LAYERS names `{module}` twice"
            );
        }
    }
    layer
}

/// Every .rs file under `root` with its module and its non-test imports; files that are
/// test-only modules (`#[cfg(test)] mod x;`) count for the line limit only.
fn read_sources(root: &Path) -> Vec<Source> {
    let mut paths = Vec::new();
    walk(root, &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no .rs file under {}", root.display());
    let mut parsed = Vec::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut top_level: BTreeSet<String> = BTreeSet::new();
    for path in &paths {
        let rel = path.strip_prefix(root).expect("under src");
        let module_path = module_path(rel);
        if let Some(top) = module_path.first() {
            top_level.insert(top.clone());
        }
        let text = fs::read_to_string(path).expect("readable source");
        let is_main = rel == Path::new("main.rs");
        let scanned = scan(&text, &module_path, is_main);
        for child in &scanned.test_modules {
            let mut child_path = module_path.clone();
            child_path.push(child.clone());
            test_only.insert(child_path);
        }
        parsed.push((
            rel.to_path_buf(),
            module_path,
            text.lines().count(),
            scanned,
        ));
    }
    parsed
        .into_iter()
        .map(|(rel, module_path, lines, scanned)| {
            let is_test = (1..=module_path.len()).any(|n| test_only.contains(&module_path[..n]));
            let module = match module_path.first() {
                Some(top) => top.clone(),
                None if rel == Path::new("main.rs") => "main".to_owned(),
                None => "lib".to_owned(),
            };
            let imports = if is_test {
                Vec::new()
            } else {
                scanned
                    .imports
                    .into_iter()
                    .filter(|i| !i.bare || top_level.contains(&i.module))
                    .map(|mut i| {
                        // The root's own items (or re-exports) are the top of the crate.
                        if i.module != "lib" && !top_level.contains(&i.module) {
                            i.module = "lib".to_owned();
                        }
                        i
                    })
                    .collect()
            };
            Source {
                path: format!("src/{}", rel.display()),
                module,
                lines,
                imports,
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `edge/ws/codec.rs` → `[edge, ws, codec]`; `hub/mod.rs` → `[hub]`; `lib.rs` → `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    let at_root = parts.is_empty();
    if !(stem == "mod" || (at_root && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_owned());
    }
    parts
}

struct Scanned {
    imports: Vec<Import>,
    /// Child modules declared as `#[cfg(test)] mod x;`.
    test_modules: Vec<String>,
}

/// The imports of one file at `module_path`. In `main.rs` (its own crate) the library is
/// `relaymesh_node`.
fn scan(text: &str, module_path: &[String], is_main: bool) -> Scanned {
    let code = blank_comments_and_literals(text);
    let (code, test_modules) = blank_test_items(&code);
    let tokens = tokenize(&code);
    let root = if is_main { "relaymesh_node" } else { "crate" };
    let is_lib = module_path.is_empty() && !is_main;
    let mut imports = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (at, ref word) = tokens[i];
        let starts_path = i == 0 || tokens[i - 1].1 != "::";
        let followed = tokens.get(i + 1).is_some_and(|t| t.1 == "::");
        if !(starts_path && followed) {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut depth = module_path.len();
        let mut bare = false;
        let from_root = if word == root {
            j += 2;
            true
        } else if is_lib && !["self", "Self", "super", "crate"].contains(&word.as_str()) {
            // In the crate root a module is named without `crate::` (`links::spawn`).
            bare = true;
            true
        } else if word == "super" && !is_main {
            while tokens.get(j).is_some_and(|t| t.1 == "super")
                && tokens.get(j + 1).is_some_and(|t| t.1 == "::")
            {
                depth = depth.saturating_sub(1);
                j += 2;
            }
            depth == 0
        } else {
            false
        };
        if !from_root {
            i += 1;
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let end = path_end(&tokens, j);
        let last = &tokens[end - 1];
        let written = &code[at..last.0 + last.1.len()];
        let text = written.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut modules = first_segments(&tokens[j..end]);
        // `crate::{Shared, Clock}` is one import of the root, reported once.
        let mut seen = BTreeSet::new();
        modules.retain(|m| seen.insert(m.clone()));
        for module in modules {
            imports.push(Import {
                module,
                line,
                text: text.clone(),
                bare,
            });
        }
        i = end;
    }
    Scanned {
        imports,
        test_modules,
    }
}

/// Where the path starting at `start` (after its root) ends: after its last segment or its
/// closing brace.
fn path_end(tokens: &[(usize, String)], start: usize) -> usize {
    let mut i = start;
    let mut depth = 0usize;
    while i < tokens.len() {
        let t = tokens[i].1.as_str();
        match t {
            "{" => depth += 1,
            "}" if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ if depth > 0 => {}
            "::" => {}
            _ if is_ident(t) || t == "*" => {
                if tokens.get(i + 1).is_none_or(|n| n.1 != "::") {
                    return i + 1;
                }
            }
            _ => return i,
        }
        i += 1;
    }
    i
}

/// The first segment after the root: one, or each one of a group `{a, b::C}`.
fn first_segments(tokens: &[(usize, String)]) -> Vec<String> {
    let Some(first) = tokens.first() else {
        return Vec::new();
    };
    if first.1 != "{" {
        let name = if first.1 == "*" { "lib" } else { &first.1 };
        return vec![name.to_owned()];
    }
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut expect_segment = false;
    for (_, t) in tokens {
        match t.as_str() {
            "{" => {
                depth += 1;
                expect_segment = depth == 1;
            }
            "}" => depth = depth.saturating_sub(1),
            "," if depth == 1 => expect_segment = true,
            // `self` inside the root's group is the root itself.
            "self" | "*" if expect_segment => {
                out.push("lib".to_owned());
                expect_segment = false;
            }
            t if expect_segment && is_ident(t) => {
                out.push(t.to_owned());
                expect_segment = false;
            }
            _ => {}
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation, each with its byte offset.
fn tokenize(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((start, code[start..i].to_owned()));
        } else if c == b':' && bytes.get(i + 1) == Some(&b':') {
            tokens.push((i, "::".to_owned()));
            i += 2;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else {
            let len = code[i..].chars().next().map_or(1, char::len_utf8);
            tokens.push((i, code[i..i + len].to_owned()));
            i += len;
        }
    }
    tokens
}

/// `text` with comments, strings and character literals replaced by spaces (newlines
/// kept, so byte offsets and line numbers stay those of the file).
fn blank_comments_and_literals(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some((open, hashes)) = raw_string_start(b, i) {
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = open;
            let end = b[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(b.len(), |n| body + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\u{1F600}', '{'), not a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                // The escaped character itself may be a quote: `'\''`.
                b.get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&c| c == b'\''))
                    .map(|n| i + 3 + n + 1)
            } else {
                let len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len + 1)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else if b[i].is_ascii_alphanumeric() || b[i] == b'_' {
            // Skip a whole identifier, so the `b` of `ab"…"` is not read as a byte string.
            // (A `b"…"` byte string's `"` is then blanked on the next turn.)
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8: whole characters become spaces")
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i` opens: the offset of its
/// body and its number of `#`.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    (b.get(j) == Some(&b'"')).then_some((j + 1, hashes))
}

/// `code` with every `#[cfg(test)]` item blanked, and the names of the test-only child
/// modules it declares (`#[cfg(test)] mod x;`).
fn blank_test_items(code: &str) -> (String, Vec<String>) {
    const CFG_TEST: &str = "#[cfg(test)]";
    let mut out = code.as_bytes().to_vec();
    let mut test_modules = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find(CFG_TEST) {
        let start = from + found;
        let end = item_end(code, start + CFG_TEST.len());
        let item = &code[start + CFG_TEST.len()..end];
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(at) = words.iter().position(|w| *w == "mod") {
            if item.trim_end().ends_with(';') {
                if let Some(name) = words.get(at + 1) {
                    test_modules.push((*name).to_owned());
                }
            }
        }
        for byte in &mut out[start..end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
        from = end;
    }
    let code = String::from_utf8(out).expect("only ASCII bytes were replaced");
    (code, test_modules)
}

/// The end of the item starting at `from` (after its attributes): its `;` or the brace
/// that closes its body, whichever comes first at depth 0.
fn item_end(code: &str, from: usize) -> usize {
    let b = code.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// A cycle of the graph as a path that ends where it starts, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, graph, &mut marks, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}
