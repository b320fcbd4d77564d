//! The documentation points at things that exist: every relative link of the README and of
//! `docs/` (and the anchor it names, by GitHub's heading slugs), and every repository path named
//! in backticks (`crates/...`, `scripts/...`, `benches/...`). A page that outlives a moved file
//! or a renamed section fails here, not in a reader's hands.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_path_buf()
}

/// The pages checked.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("models/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> HashSet<String> {
    let mut in_code = false;
    let mut out = HashSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// `(target)` of every `](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// Repository paths named in backticks.
fn named_paths(text: &str) -> Vec<String> {
    const TOP: [&str; 9] = [
        "crates/",
        "scripts/",
        "models/",
        "benches/",
        "docs/",
        "examples/",
        "tests/",
        "proto/",
        "training-data/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| TOP.iter().any(|t| s.starts_with(t)))
        .filter(|s| !s.contains(['*', '<', '{', ' ', '$', '…']) && !s.contains("..."))
        .map(|s| s.trim_end_matches(['.', ',', ':', ';']).to_owned())
        .collect()
}

#[test]
fn every_link_and_named_path_in_the_docs_exists() {
    let root = root();
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page reads");
        let dir = page.parent().expect("a directory");
        let name = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !target.exists() {
                broken.push(format!("{name}: link {link:?}: no such file"));
                continue;
            }
            if !anchor.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let heads = anchors(&std::fs::read_to_string(&target).expect("target reads"));
                if !heads.contains(anchor) {
                    broken.push(format!("{name}: link {link:?}: no such section"));
                }
            }
        }
        for path in named_paths(&text) {
            if !root.join(&path).exists() && !made_at_run_time(&root, &path) {
                broken.push(format!("{name}: names {path:?}, which does not exist"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Whether `path` lies in a directory the repository ignores because setup or a running server
/// makes it (an anchored `.gitignore` entry such as `/training-data/log/`): a fresh clone has
/// none of those, yet the docs rightly name them.
fn made_at_run_time(root: &Path, path: &str) -> bool {
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap_or_default();
    ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('/'))
        .map(|l| l.trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .any(|dir| path == dir || path.starts_with(&format!("{dir}/")))
}

/// Every key of the embedded defaults is documented: `section.key` in `docs/configuration.md`.
#[test]
fn every_default_key_is_in_the_configuration_page() {
    let root = root();
    let defaults = std::fs::read_to_string(root.join("crates/triage-core/default.toml"))
        .expect("default.toml");
    let defaults: toml::Table = defaults.parse().expect("default.toml parses");
    let page = std::fs::read_to_string(root.join("docs/configuration.md")).expect("page");
    let mut missing = Vec::new();
    for (section, value) in &defaults {
        match value {
            toml::Value::Table(keys) => {
                for key in keys.keys() {
                    let name = format!("{section}.{key}");
                    if !page.contains(&format!("`{name}`")) {
                        missing.push(name);
                    }
                }
            }
            // [[models]]: the catalog, documented as a whole.
            _ => {
                if !page.contains(&format!("[[{section}]]")) {
                    missing.push(format!("[[{section}]]"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document: {}",
        missing.join(", ")
    );
}

#[test]
fn the_checks_see_what_they_should() {
    assert_eq!(
        slug("Security: what a key can and cannot do"),
        "security-what-a-key-can-and-cannot-do"
    );
    assert_eq!(
        slug("Verify, then escalate (cascades)"),
        "verify-then-escalate-cascades"
    );
    assert_eq!(links("see [a](b.md#c) and [d](e)"), ["b.md#c", "e"]);
    assert!(made_at_run_time(&root(), "training-data/log/"));
    assert!(!made_at_run_time(&root(), "training-data/nothing-here"));
    assert_eq!(
        named_paths("run `scripts/test.sh`, not `crates/*/src` or `cargo test`"),
        ["scripts/test.sh"]
    );
}
