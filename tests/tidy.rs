//! Tidy: the boundaries the conventions ask for, checked on the tree itself
//! (rust-analyzer's `xtask/src/tidy.rs` is the model).
//!
//! - Each workspace crate depends (normally, not for tests) only on the
//!   workspace crates its direction allows (`cargo metadata`), and reaches
//!   none of its forbidden crates transitively, with the features it builds
//!   with on its own (`cargo tree -p`).
//! - `cargo tree -p stockd-client` holds no server piece: no RocksDB,
//!   openraft, ort, axum, or server crate of this workspace.
//! - Every Rust source file starts with a `//!` header.
//! - No two modules of one crate import each other, directly or around a
//!   circle.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo).args(args).current_dir(root()).output().expect("run cargo");
    assert!(output.status.success(), "cargo {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("cargo prints UTF-8")
}

/// The platform this machine builds for (`rustc -vV`'s `host:`).
fn host_triple() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc).arg("-vV").output().expect("run rustc");
    let text = String::from_utf8(output.stdout).expect("rustc prints UTF-8");
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").trim().to_owned()
}

/// Which workspace crates each crate may depend on, and which crates none of
/// its normal dependencies may reach.
struct Rule {
    krate: &'static str,
    allowed: &'static [&'static str],
    forbidden: &'static [&'static str],
}

const SERVER_PIECES: &[&str] = &["rocksdb", "librocksdb-sys", "openraft", "ort", "ort-sys"];

const RULES: &[Rule] = &[
    // The home slot of an id: pure arithmetic that both sides share.
    Rule { krate: "stockd-home", allowed: &[], forbidden: &["rocksdb", "librocksdb-sys", "openraft", "ort", "tonic", "storage", "stockd-proto"] },
    Rule {
        krate: "stockd-proto",
        allowed: &["stockd-home"],
        forbidden: &["rocksdb", "librocksdb-sys", "openraft", "ort", "storage", "raft", "models", "stockd"],
    },
    Rule {
        krate: "stockd-client",
        allowed: &["stockd-proto"],
        forbidden: &["rocksdb", "librocksdb-sys", "openraft", "ort", "storage", "raft", "models", "stockd"],
    },
    Rule { krate: "storage", allowed: &["stockd-home"], forbidden: &["openraft", "tonic", "ort"] },
    Rule { krate: "raft", allowed: &["storage"], forbidden: &["tonic", "ort"] },
    Rule { krate: "models", allowed: &["storage"], forbidden: &["tonic", "openraft", "rocksdb"] },
    Rule { krate: "jepsen", allowed: &["stockd-client", "stockd-proto"], forbidden: &["rocksdb", "openraft", "ort", "storage", "raft", "models", "stockd"] },
    Rule { krate: "stockd", allowed: &["stockd-proto", "stockd-client", "storage", "raft", "models"], forbidden: &[] },
];

/// Package id -> (name, normal dependency ids).
type PackageGraph = BTreeMap<String, (String, Vec<String>)>;

/// The resolved packages and the workspace members' names, from
/// `cargo metadata`.
fn dependency_graph() -> (PackageGraph, BTreeSet<String>) {
    // Resolved for this machine's platform only: the others' dependencies
    // (never built here) need not be in the offline package cache.
    let host = host_triple();
    let metadata: Value =
        serde_json::from_str(&cargo(&["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])).expect("metadata is JSON");
    let names: BTreeMap<String, String> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id").to_owned(), p["name"].as_str().expect("name").to_owned()))
        .collect();
    let members: BTreeSet<String> = metadata["workspace_members"].as_array().expect("members").iter().map(|m| names[m.as_str().expect("id")].clone()).collect();
    let mut graph = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let id = node["id"].as_str().expect("id").to_owned();
        let normal = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| d["dep_kinds"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null())))
            .map(|d| d["pkg"].as_str().expect("pkg").to_owned())
            .collect();
        graph.insert(id.clone(), (names[&id].clone(), normal));
    }
    (graph, members)
}

#[test]
fn crates_depend_only_in_the_allowed_direction() {
    let (graph, members) = dependency_graph();
    assert_eq!(members, RULES.iter().map(|r| r.krate.to_owned()).collect(), "every workspace crate has a rule");
    let mut broken = Vec::new();
    for rule in RULES {
        let (_, (_, direct)) = graph.iter().find(|(_, (name, _))| name == rule.krate).expect("the crate is resolved");
        for dep in direct {
            let name = &graph[dep].0;
            if members.contains(name) && !rule.allowed.contains(&name.as_str()) {
                broken.push(format!("{} depends on {name}, outside its direction {:?}", rule.krate, rule.allowed));
            }
        }
        for reached in tree_of(rule.krate) {
            if rule.forbidden.contains(&reached.as_str()) {
                broken.push(format!("{} reaches {reached}, which it must not", rule.krate));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Every crate `krate` builds with, on its own (normal dependencies).
fn tree_of(krate: &str) -> BTreeSet<String> {
    let tree = cargo(&["tree", "-p", krate, "-e", "normal", "--prefix", "none", "--offline"]);
    tree.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn the_client_crate_builds_without_server_pieces() {
    let crates = tree_of("stockd-client");
    let tree = crates.iter().cloned().collect::<Vec<_>>().join(" ");
    assert!(crates.contains("tonic") && crates.contains("stockd-proto"), "{tree}");
    let server: Vec<&String> = crates
        .iter()
        .filter(|c| {
            SERVER_PIECES.contains(&c.as_str()) || ["axum", "tonic-health", "tonic-reflection", "storage", "raft", "models", "stockd"].contains(&c.as_str())
        })
        .collect();
    assert!(server.is_empty(), "stockd-client pulls in {server:?}:\n{tree}");
}

/// Every `.rs` file of the workspace, outside build output.
fn sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if path.is_dir() {
                if !["target", "data", ".venv", ".git", "node_modules"].contains(&name) && !name.starts_with('.') {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_source_file_has_a_header() {
    let files = sources();
    assert!(files.len() > 50, "found the sources: {}", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read a source file");
            !text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| f.strip_prefix(root()).unwrap_or(f).display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` header:\n{}", missing.join("\n"));
}

/// The top-level modules named by `crate::` paths in `text`, comments aside.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list.split('}').next().unwrap_or_default().split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let ident: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !ident.is_empty() {
                    found.insert(ident);
                }
            }
        }
    }
    found
}

/// Module -> the modules it names, for the crate whose sources are in `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources().into_iter().filter(|f| f.starts_with(src)) {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a component").as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if ["lib", "main", "bin"].contains(&first.as_str()) {
            continue;
        }
        let references = crate_references(&std::fs::read_to_string(&file).expect("read"));
        graph.entry(first.clone()).or_default().extend(references.into_iter().filter(|r| *r != first));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    graph.values_mut().for_each(|deps| deps.retain(|d| modules.contains(d)));
    graph
}

/// A circle of modules, if any: `a -> b -> a`.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in &graph[node] {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_go_around_a_circle() {
    let mut circles = Vec::new();
    for src in ["src", "proto/src", "client/src", "storage/src", "raft/src", "models/src", "jepsen/src"] {
        let graph = module_graph(&root().join(src));
        assert!(!graph.is_empty(), "{src} has modules");
        if let Some(circle) = find_circle(&graph) {
            circles.push(format!("{src}: {}", circle.join(" -> ")));
        }
    }
    assert!(circles.is_empty(), "import circles (move the shared types to a module of their own):\n{}", circles.join("\n"));
}

#[test]
fn the_circle_finder_finds_circles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(find_circle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(
        crate_references("use crate::{node::Node, peer};\n// crate::ignored\nlet x = crate::status::ok();"),
        ["node", "peer", "status"].map(String::from).into()
    );
}
