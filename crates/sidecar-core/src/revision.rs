//! Policy revisions: each distinct content of a policy's spec, named by a stable hash.
//!
//! A revision covers what a policy injects and where (`order`, `placement`, containers, volumes,
//! app-container additions, pod settings), not which Deployments get it (`selector`) nor how the
//! operator keeps its history (`revisionHistoryLimit`) nor whether new Deployments wait for it
//! (`holdNewDeployments`) nor how a new revision is rolled out (`rollout`): narrowing a selector
//! is not a new version of a sidecar. The
//! controller stores each revision as a `ControllerRevision` owned by the policy, as Kubernetes
//! stores a DaemonSet's or a StatefulSet's history, and every Deployment's
//! record names the revision it was rendered from, so that a Deployment can be rendered against
//! the revision it carries.
//!
//! The hash must not change between releases for the same content: it is computed over JSON
//! with sorted keys, fields left at their default are omitted by the API types, and the hash
//! function (FNV-1a, 64 bit) is fixed rather than taken from `std`, whose hasher may change.

use std::collections::BTreeSet;
use std::hash::Hasher;

use fnv::FnvHasher;
use serde_json::{Map, Value};
use sidecar_api::{SidecarPolicy, SidecarPolicySpec};

/// Spec fields that are not part of a revision's content.
const NOT_CONTENT: [&str; 4] = [
    "selector",
    "revisionHistoryLimit",
    "holdNewDeployments",
    "rollout",
];

/// Characters of the hash kept in names: 40 bits, so two of a policy's revisions collide with a
/// chance of about one in a trillion. A collision is detected (the stored content differs) and
/// reported, never silently reused.
pub const HASH_LEN: usize = 10;

/// The content of `spec` that makes a revision, as the JSON object stored in its
/// `ControllerRevision` (under `spec`).
pub fn content(spec: &SidecarPolicySpec) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        for field in NOT_CONTENT {
            object.remove(field);
        }
    }
    value
}

/// The revision hash of `content` (see [`content`]): `HASH_LEN` lower-case hex digits.
pub fn hash(content: &Value) -> String {
    // FNV-1a: stable across releases and platforms, unlike `std`'s hasher.
    let mut hasher = FnvHasher::default();
    canonical(content, &mut hasher);
    let mut text = format!("{:016x}", hasher.finish());
    text.truncate(HASH_LEN);
    text
}

/// The revision hash of a policy's current spec.
pub fn of(policy: &SidecarPolicy) -> String {
    hash(&content(&policy.spec))
}

/// `policy` as it was at a revision: its current metadata and selector, with the revision's
/// content. Content fields this release does not know are ignored.
pub fn at(policy: &SidecarPolicy, content: &Value) -> Result<SidecarPolicy, serde_json::Error> {
    let mut spec = match content {
        Value::Object(fields) => fields.clone(),
        _ => Map::new(),
    };
    let current = serde_json::to_value(&policy.spec)?;
    for field in NOT_CONTENT {
        if let Some(value) = current.get(field) {
            spec.insert(field.to_owned(), value.clone());
        }
    }
    Ok(SidecarPolicy {
        metadata: policy.metadata.clone(),
        spec: serde_json::from_value(Value::Object(spec))?,
        status: None,
    })
}

/// A revision as stored: its hash and its number (`ControllerRevision.revision`, which grows with
/// every change, so the highest number is the current revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub hash: String,
    pub number: i64,
}

/// One change to a policy's stored history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Store the current revision, numbered `number`.
    Create { number: i64 },
    /// Renumber a stored revision that became current again (a rollback), as Kubernetes does for
    /// a DaemonSet's or StatefulSet's history.
    Renumber { hash: String, number: i64 },
    /// Delete a revision that is neither current, nor carried, nor among the newest kept.
    Delete { hash: String },
}

/// What to change in a policy's `stored` revisions so that the `current` one is stored with the
/// highest number and, besides it and the revisions Deployments still `carried`, at most `limit`
/// older ones are kept (the newest). An empty result means the history is as it should be.
pub fn history(current: &str, stored: &[Stored], carried: &BTreeSet<String>, limit: usize) -> Vec<Change> {
    let mut changes = Vec::new();
    let highest = stored.iter().map(|s| s.number).max().unwrap_or(0);
    match stored.iter().find(|s| s.hash == current) {
        None => changes.push(Change::Create { number: highest + 1 }),
        Some(existing)
            if existing.number < highest || stored.iter().filter(|s| s.number == highest).count() > 1 =>
        {
            changes.push(Change::Renumber {
                hash: current.to_owned(),
                number: highest + 1,
            });
        }
        Some(_) => {}
    }
    let mut older: Vec<&Stored> = stored
        .iter()
        .filter(|s| s.hash != current && !carried.contains(&s.hash))
        .collect();
    older.sort_by(|a, b| b.number.cmp(&a.number).then_with(|| a.hash.cmp(&b.hash)));
    for old in older.into_iter().skip(limit) {
        changes.push(Change::Delete {
            hash: old.hash.clone(),
        });
    }
    changes
}

/// Writes `value` as JSON with object keys sorted, whatever order the map keeps them in.
fn canonical(value: &Value, out: &mut FnvHasher) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.write(b"{");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.write(b",");
                }
                out.write(Value::String(key.clone()).to_string().as_bytes());
                out.write(b":");
                canonical(&map[key], out);
            }
            out.write(b"}");
        }
        Value::Array(items) => {
            out.write(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write(b",");
                }
                canonical(item, out);
            }
            out.write(b"]");
        }
        scalar => out.write(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: Value) -> SidecarPolicy {
        serde_json::from_value(json!({
            "apiVersion": "sidecar.dev/v1alpha1",
            "kind": "SidecarPolicy",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec(image: &str, selector: Value) -> Value {
        json!({"selector": selector, "sidecars": [{"name": "s", "image": image}]})
    }

    #[test]
    fn the_hash_is_pinned() {
        // A change here changes every Deployment's record and rolls nothing, but it makes every
        // replica of an older release see every Deployment as out of date: keep it stable.
        assert_eq!(of(&policy(spec("busybox:1.36", json!({})))), "6c5e01cd82");
    }

    #[test]
    fn the_selector_is_not_content_but_everything_else_is() {
        let base = of(&policy(spec("busybox:1.36", json!({}))));
        assert_eq!(base.len(), HASH_LEN);
        assert_eq!(
            of(&policy(spec("busybox:1.36", json!({"matchLabels": {"a": "b"}})))),
            base
        );
        assert_ne!(of(&policy(spec("busybox:1.37", json!({})))), base);
        let mut ordered = spec("busybox:1.36", json!({}));
        ordered["order"] = json!(5);
        assert_ne!(of(&policy(ordered)), base);
        // How the operator keeps history, whether new Deployments wait and how a revision rolls
        // out are not content either.
        let mut bookkeeping = spec("busybox:1.36", json!({}));
        bookkeeping["revisionHistoryLimit"] = json!(3);
        bookkeeping["holdNewDeployments"] = json!(false);
        bookkeeping["rollout"] = json!({"maxConcurrent": "10%", "paused": true});
        assert_eq!(of(&policy(bookkeeping)), base);
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"p": 2, "q": 1}]}, "b": 1});
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&json!({"b": 1})));
    }

    fn stored(entries: &[(&str, i64)]) -> Vec<Stored> {
        entries
            .iter()
            .map(|(hash, number)| Stored {
                hash: (*hash).to_owned(),
                number: *number,
            })
            .collect()
    }

    #[test]
    fn history_stores_the_current_revision_last() {
        let none = BTreeSet::new();
        assert_eq!(history("a", &[], &none, 10), [Change::Create { number: 1 }]);
        assert_eq!(
            history("b", &stored(&[("a", 1)]), &none, 10),
            [Change::Create { number: 2 }]
        );
        assert!(history("b", &stored(&[("a", 1), ("b", 2)]), &none, 10).is_empty());
        // Back to an older content: that revision is reused, and numbered last.
        assert_eq!(
            history("a", &stored(&[("a", 1), ("b", 2)]), &none, 10),
            [Change::Renumber {
                hash: "a".into(),
                number: 3
            }]
        );
    }

    #[test]
    fn history_keeps_the_newest_and_the_carried() {
        let history_of = |carried: &[&str], limit| {
            let carried: BTreeSet<String> = carried.iter().map(|s| (*s).to_owned()).collect();
            let revisions = stored(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]);
            history("e", &revisions, &carried, limit)
        };
        let deleted = |changes: Vec<Change>| -> Vec<String> {
            changes
                .into_iter()
                .filter_map(|c| match c {
                    Change::Delete { hash } => Some(hash),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(deleted(history_of(&[], 2)), ["b", "a"]);
        assert_eq!(
            deleted(history_of(&["a"], 2)),
            ["b"],
            "a carried revision is kept"
        );
        assert_eq!(deleted(history_of(&[], 0)), ["d", "c", "b", "a"]);
        assert!(deleted(history_of(&[], 10)).is_empty());
    }

    #[test]
    fn a_policy_at_an_older_revision_keeps_its_selector() {
        let old = policy(spec("busybox:1.36", json!({"matchLabels": {"a": "old"}})));
        let new = policy(spec("busybox:1.37", json!({"matchLabels": {"a": "new"}})));
        let back = at(&new, &content(&old.spec)).unwrap();
        assert_eq!(back.spec.sidecars[0].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(back.spec.selector, new.spec.selector);
        assert_eq!(of(&back), of(&old));
    }
}
