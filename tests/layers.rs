//! The crate's modules depend on each other one way only: each layer below
//! may use those listed before it, never one listed after. This test reads the
//! sources (no broker needed) and names every import that breaks the order,
//! and checks that the Kafka layer never names the services' settings or
//! scripts: its errors carry data, and the services add the operator's hint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module belongs to the longest entry that is its
/// path or a prefix of it; an entry marked exact holds only that module, so a
/// new folder under it must be placed here before the test passes.
const LAYERS: &[(&str, Exact)] = &[
    // What every layer shares.
    ("clock", Exact::No),
    ("correlation", Exact::No),
    ("trace", Exact::No),
    ("secret", Exact::No),
    ("shutdown", Exact::No),
    ("health", Exact::No),
    ("metrics", Exact::No),
    // The Kafka layer, by concern.
    ("kafka::fix", Exact::No),
    ("kafka::topic", Exact::No),
    ("kafka::backoff", Exact::No),
    ("kafka::task", Exact::No),
    ("kafka::seeds", Exact::No),
    ("kafka::codec", Exact::No),
    ("kafka::conn", Exact::No),
    ("kafka::admin", Exact::No),
    ("kafka::produce", Exact::No),
    ("kafka::fetch", Exact::No),
    ("kafka::group", Exact::No),
    ("kafka::consume", Exact::No),
    ("kafka::middleware", Exact::No),
    // Its re-exports are for the layers above; inside it, paths name the
    // defining module.
    ("kafka", Exact::Yes),
    // The system's events and settings.
    ("domain", Exact::No),
    ("events", Exact::No),
    ("http_client", Exact::No),
    ("config", Exact::No),
    ("auth", Exact::No),
    ("logging", Exact::No),
    ("http", Exact::No),
    // The services, and the process around them.
    ("services", Exact::No),
    ("app", Exact::No),
    ("", Exact::Yes),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Exact {
    Yes,
    No,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .filter(|(_, (entry, exact))| {
            module == *entry || (*exact == Exact::No && module.starts_with(&format!("{entry}::")))
        })
        .max_by_key(|(_, (entry, _))| entry.len())
        .map(|(i, _)| i)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/kafka/fetch/read.rs` is `kafka::fetch::read`; `mod.rs` is its folder.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
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

/// The code a file compiles into the library: comments and `#[cfg(test)]`
/// modules left out.
fn library_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            let next = lines.next().unwrap_or_default();
            if next.trim_end().ends_with('{') {
                // A test module runs to the end of the file, by this crate's habit;
                // anything after it would be test code too.
                break;
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find(" // ") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree such as `super::{a::B, c}` into its paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree).trim();
            // `a::{self, B}` names `a` itself.
            let path = path.strip_suffix("::self").unwrap_or(path);
            if !path.is_empty() {
                out.push(format!("{prefix}{path}"));
            }
        }
        Some(open) => {
            let head = tree[..open].trim();
            let inner = &tree[open + 1..tree.rfind('}').expect("balanced use tree")];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&inner[start..], &format!("{prefix}{head}"), out);
        }
    }
}

/// The paths a file's code names: its `use` trees (a statement starts a line,
/// as rustfmt writes it), and `crate::`/`super::` paths written inline.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut other = String::new();
    let mut statement: Option<String> = None;
    for line in code.lines() {
        let trimmed = line.trim_start();
        if statement.is_none() {
            let visibility = ["pub(crate) ", "pub(super) ", "pub ", ""]
                .into_iter()
                .find(|v| trimmed.starts_with(&format!("{v}use ")));
            match visibility {
                Some(v) => statement = Some(trimmed[v.len() + 4..].to_owned()),
                None => {
                    other.push_str(line);
                    other.push('\n');
                    continue;
                }
            }
        } else if let Some(s) = statement.as_mut() {
            s.push_str(trimmed);
        }
        if let Some(s) = statement.take_if(|s| s.contains(';')) {
            let tree: String = s[..s.find(';').unwrap_or(s.len())]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            expand(&tree, "", &mut paths);
        }
    }
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = other[from..].find(root) {
            let start = from + i;
            let preceded = other[..start]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let len = other[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(other.len() - start);
            if !preceded {
                paths.push(other[start..start + len].trim_end_matches(':').to_owned());
            }
            from = start + len.max(1);
        }
    }
    paths
}

/// The module a path names, as the longest of its prefixes that is a module;
/// `None` for paths outside the crate.
fn resolve(path: &str, here: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<String> = Vec::new();
    let mut parts = path.split("::").filter(|s| !s.is_empty()).peekable();
    match parts.peek().copied() {
        Some("crate") => {
            parts.next();
        }
        Some("super") => {
            segments = here.to_vec();
            while parts.peek() == Some(&"super") {
                parts.next();
                segments.pop();
            }
        }
        Some("self") => {
            parts.next();
            segments = here.to_vec();
        }
        _ => return None,
    }
    segments.extend(parts.map(str::to_owned));
    (0..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains(m))
}

#[test]
fn modules_depend_on_the_layers_below_them_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_path(&src, f).join("::"))
        .collect();

    let mut problems = Vec::new();
    for module in &modules {
        if layer_of(module).is_none() {
            problems.push(format!(
                "{module:?} has no layer: add it to LAYERS in tests/layers.rs"
            ));
        }
    }
    for file in &files {
        let here = module_path(&src, file);
        let name = here.join("::");
        let Some(own) = layer_of(&name) else { continue };
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in named_paths(&library_code(&text)) {
            let Some(target) = resolve(&path, &here, &modules) else {
                continue;
            };
            let Some(theirs) = layer_of(&target) else {
                continue;
            };
            if theirs > own {
                problems.push(format!(
                    "{} uses {path} ({}), a layer above its own ({})",
                    file.strip_prefix(&src).unwrap_or(file).display(),
                    if LAYERS[theirs].0.is_empty() {
                        "the crate root"
                    } else {
                        LAYERS[theirs].0
                    },
                    if LAYERS[own].0.is_empty() {
                        "the crate root"
                    } else {
                        LAYERS[own].0
                    },
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dependency direction is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_kafka_layer_knows_nothing_of_the_services() {
    let kafka = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kafka");
    let mut files = Vec::new();
    sources(&kafka, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for line in library_code(&text).lines() {
            for word in ["APP_", "scripts/", "rust_eda::services", "crate::services"] {
                if line.contains(word) {
                    problems.push(format!("{}: {word} in {:?}", file.display(), line.trim()));
                }
            }
            // A script's name: `.sh` not followed by more of an identifier.
            let script = line.match_indices(".sh").any(|(i, _)| {
                !line[i + 3..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if script {
                problems.push(format!(
                    "{}: a script name in {:?}",
                    file.display(),
                    line.trim()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_a_broken_direction() {
    // The checks above only mean something if the parsing finds imports at all.
    let code = library_code(
        "use super::{a::B, c as d};\npub(crate) use crate::kafka::Message;\n// use crate::app;\nfn f() { crate::metrics::counter(); }\n#[cfg(test)]\nmod tests {\n use crate::app;\n}\n",
    );
    let paths = named_paths(&code);
    assert_eq!(
        paths,
        [
            "super::a::B",
            "super::c",
            "crate::kafka::Message",
            "crate::metrics::counter"
        ]
    );
    let modules: BTreeSet<String> = ["", "kafka", "kafka::fetch", "metrics", "app"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let here = ["kafka".to_owned(), "fetch".to_owned(), "read".to_owned()];
    assert_eq!(
        resolve("crate::kafka::Message", &here, &modules).as_deref(),
        Some("kafka")
    );
    assert_eq!(
        resolve("super::Message", &here, &modules).as_deref(),
        Some("kafka::fetch")
    );
    assert!(layer_of("kafka") > layer_of("kafka::fetch::read"));
    assert_eq!(layer_of("kafka::unlisted"), None);
}
