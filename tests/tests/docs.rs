//! Every relative link in the Markdown docs (README, docs/, examples/, deploy/) points at a file
//! or directory that exists, and its `#anchor`, if any, at a heading of that file, so a reader
//! following the guide never lands on a 404 or at the top of a long page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "md") {
            found.push(path);
        }
    }
}

/// The targets of `[text](target)` links in `markdown`, outside code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped (so `` `code` `` and links keep their text only).
fn slug(heading: &str) -> String {
    heading
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

/// The anchors of `markdown`'s headings, outside code blocks; a repeated heading gets `-1`,
/// `-2`, ... as on GitHub. Explicit `<a id="...">` anchors count too.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: Vec<String> = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(line[hashes..].trim_end_matches('#'));
            let n = seen.iter().filter(|s| **s == base).count();
            anchors.insert(if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            });
            seen.push(base);
        }
        for marker in ["<a id=\"", "<a name=\""] {
            let mut rest = line;
            while let Some(start) = rest.find(marker) {
                let after = &rest[start + marker.len()..];
                let Some(end) = after.find('"') else { break };
                anchors.insert(after[..end].to_owned());
                rest = &after[end..];
            }
        }
    }
    anchors
}

#[test]
fn relative_links_resolve() {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples", "deploy"] {
        markdown_files(&root.join(dir), &mut files);
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in link_targets(&text) {
            let external = target.contains("://") || target.starts_with("mailto:");
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            if external {
                continue;
            }
            let linked = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let found = match anchor {
                _ if !linked.exists() => false,
                Some(anchor) if linked.extension().is_some_and(|e| e == "md") => {
                    anchors(&std::fs::read_to_string(&linked).unwrap()).contains(anchor)
                }
                _ => true,
            };
            if !found {
                broken.push(format!(
                    "{}: {target}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_github_slugs() {
    let markdown = "# Offline render (`sidecar-operator render`)\n## Known limits\n```\n# not a heading\n```\n\
                    ## Known limits\n### U4: a TLS proxy, step_by_step!\n#hashtag\n<a id=\"custom\"></a>\n";
    let found: Vec<String> = anchors(markdown).into_iter().collect();
    assert_eq!(
        found,
        [
            "custom",
            "known-limits",
            "known-limits-1",
            "offline-render-sidecar-operator-render",
            "u4-a-tls-proxy-step_by_step",
        ]
    );
}

#[test]
fn link_targets_are_found_and_code_is_skipped() {
    let markdown = "See [a](a.md) and [b](../b/#x).\n```\n[not](c.md)\n```\n[d](https://e.org)";
    assert_eq!(link_targets(markdown), ["a.md", "../b/#x", "https://e.org"]);
}
