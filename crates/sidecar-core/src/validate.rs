//! Checks of a SidecarPolicy on its own, independent of any Deployment.
//!
//! The CRD schema rejects most of these at admission; the engine checks them again because
//! policies also arrive from files (`render`) and from clusters whose CRD is older than the
//! operator. Warnings flag what is legal but probably not what the user wants.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sidecar_api::schema::{
    DNS_LABEL_MAX, MAX_APP_PATCHES, MAX_INIT_CONTAINERS, MAX_LIST_ITEMS, MAX_SIDECARS, MAX_VOLUMES,
};
use sidecar_api::{Rollout, SidecarPolicy};

use crate::problem::{Problem, ProblemKind, Warning};
use crate::selector;
use crate::site::Site;

/// Inclusive bounds of `spec.order`.
pub const ORDER_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Every way `policy` is invalid on its own.
pub(crate) fn problems(policy: &SidecarPolicy, name: &str) -> Vec<Problem> {
    let mut out = Problems {
        policy: name,
        list: Vec::new(),
    };
    let spec = &policy.spec;

    if let Err(e) = selector::validate(&spec.selector) {
        out.push(format!("spec.selector.{}", e.field()), e.to_string());
    }
    selector_labels(&spec.selector, "spec.selector", &mut out);
    if !ORDER_RANGE.contains(&spec.order) {
        out.push(
            "spec.order",
            format!("{} is outside the allowed range -1000..=1000", spec.order),
        );
    }
    if spec.sidecars.is_empty() && spec.init_containers.is_empty() {
        out.push(
            "spec",
            "a SidecarPolicy must inject at least one entry in spec.sidecars or spec.initContainers",
        );
    }
    out.bound("spec.sidecars", spec.sidecars.len(), MAX_SIDECARS);
    out.bound(
        "spec.initContainers",
        spec.init_containers.len(),
        MAX_INIT_CONTAINERS,
    );
    out.bound("spec.volumes", spec.volumes.len(), MAX_VOLUMES);
    out.bound("spec.appContainers", spec.app_containers.len(), MAX_APP_PATCHES);

    let mut names = BTreeSet::new();
    for (path, container) in containers(policy) {
        out.dns_label(path.field(".name"), &container.name);
        if !names.insert(container.name.as_str()) {
            out.push(
                path.field(".name").to_string(),
                format!("container name {:?} is used twice in this policy (sidecars and initContainers share one namespace)", container.name),
            );
        }
        if container.image.as_deref().is_none_or(str::is_empty) {
            out.push(
                format!("{path}.image"),
                format!("container {:?} has no image", container.name),
            );
        }
    }
    for (i, sidecar) in spec.sidecars.iter().enumerate() {
        if let Some(policy) = sidecar.restart_policy.as_deref().filter(|p| *p != "Always") {
            out.push(
                format!("spec.sidecars[{i}].restartPolicy"),
                format!("restartPolicy can only be Always, not {policy:?} (the operator sets it); run-to-completion steps belong in spec.initContainers"),
            );
        }
    }
    for (i, init) in spec.init_containers.iter().enumerate() {
        if init.restart_policy.is_some() {
            out.push(
                format!("spec.initContainers[{i}].restartPolicy"),
                "restartPolicy must not be set on an init container; long-running containers belong in spec.sidecars",
            );
        }
    }

    let mut volume_names = BTreeSet::new();
    for (i, volume) in spec.volumes.iter().enumerate() {
        out.dns_label(Site::item("spec.volumes", i).field(".name"), &volume.name);
        if !volume_names.insert(volume.name.as_str()) {
            out.push(
                format!("spec.volumes[{i}].name"),
                format!("volume name {:?} is used twice in this policy", volume.name),
            );
        }
    }

    for (i, patch) in spec.app_containers.iter().enumerate() {
        let path = format!("spec.appContainers[{i}]");
        if patch.volume_mounts.is_empty() && patch.env.is_empty() {
            out.push(
                path.clone(),
                "each entry must add at least one volume mount or env var",
            );
        }
        out.bound(
            &format!("{path}.containerNames"),
            patch.container_names.len(),
            MAX_LIST_ITEMS,
        );
        out.bound(
            &format!("{path}.volumeMounts"),
            patch.volume_mounts.len(),
            MAX_LIST_ITEMS,
        );
        out.bound(&format!("{path}.env"), patch.env.len(), MAX_LIST_ITEMS);
        for (j, name) in patch.container_names.iter().enumerate() {
            out.dns_label(format_args!("{path}.containerNames[{j}]"), name);
        }
    }

    if let Some(pod) = &spec.pod {
        for (key, value) in &pod.labels {
            let field = format!("spec.pod.labels[{key:?}]");
            if let Err(e) = qualified_name(key) {
                out.push(field.clone(), format!("label key {key:?} {e}"));
            }
            if let Err(e) = label_value(value) {
                out.push(field, format!("label value {value:?} {e}"));
            }
        }
        for key in pod.annotations.keys() {
            if let Err(e) = qualified_name(key) {
                out.push(
                    format!("spec.pod.annotations[{key:?}]"),
                    format!("annotation key {key:?} {e}"),
                );
            }
        }
    }
    if let Some(rollout) = &spec.rollout {
        rollout_problems(rollout, &mut out);
    }
    out.list
}

/// The schema's rules for `spec.rollout`.
fn rollout_problems(rollout: &Rollout, out: &mut Problems<'_>) {
    match &rollout.max_concurrent {
        Some(IntOrString::Int(n)) if *n < 1 => out.push(
            "spec.rollout.maxConcurrent",
            format!("{n} is not an integer of at least 1 or a percentage from 1% to 100%"),
        ),
        Some(IntOrString::String(text))
            if !text
                .strip_suffix('%')
                .and_then(|p| p.parse::<u8>().ok())
                .is_some_and(|p| (1..=100).contains(&p) && !text.starts_with('0')) =>
        {
            out.push(
                "spec.rollout.maxConcurrent",
                format!("{text:?} is not an integer of at least 1 or a percentage from 1% to 100%"),
            );
        }
        _ => {}
    }
    if let Some(seconds) = rollout.progress_deadline_seconds
        && !(1..=86_400).contains(&seconds)
    {
        out.push(
            "spec.rollout.progressDeadlineSeconds",
            format!("{seconds} is outside the allowed range 1..=86400"),
        );
    }
    if let Some(revision) = &rollout.acknowledged_revision
        && !(revision.len() == crate::revision::HASH_LEN
            && revision
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        out.push(
            "spec.rollout.acknowledgedRevision",
            format!(
                "{revision:?} is not a revision (10 lower-case hex digits, as status.currentRevision shows)"
            ),
        );
    }
    if let Some(canary) = &rollout.canary {
        if let Err(e) = selector::validate(&canary.selector) {
            out.push(
                format!("spec.rollout.canary.selector.{}", e.field()),
                e.to_string(),
            );
        }
        selector_labels(&canary.selector, "spec.rollout.canary.selector", out);
    }
}

/// [`selector_labels`] for a selector outside a SidecarPolicy's spec (a ClusterSidecarPolicy's
/// namespaceSelector), as problems of `policy`.
pub(crate) fn selector_label_problems(selector: &LabelSelector, path: &str, policy: &str) -> Vec<Problem> {
    let mut out = Problems {
        policy,
        list: Vec::new(),
    };
    selector_labels(selector, path, &mut out);
    out.list
}

/// Label keys and values in a selector that no object can carry. The CRD does not check them,
/// and such a selector is not malformed (it is evaluated: it matches nothing, or with `NotIn`
/// everything), so without this a typo such as `app: "web server"` would leave a policy quietly
/// matching nothing, reported as `Ready`.
fn selector_labels(selector: &LabelSelector, path: &str, out: &mut Problems<'_>) {
    let no_object = "; no object can have such a label";
    for (key, value) in selector.match_labels.iter().flatten() {
        let field = format!("{path}.matchLabels[{key:?}]");
        if let Err(e) = qualified_name(key) {
            out.push(field.clone(), format!("label key {key:?} {e}{no_object}"));
        }
        if let Err(e) = label_value(value) {
            out.push(field, format!("label value {value:?} {e}{no_object}"));
        }
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let key = &requirement.key;
        if let Err(e) = qualified_name(key) {
            out.push(
                format!("{path}.matchExpressions[{i}].key"),
                format!("label key {key:?} {e}{no_object}"),
            );
        }
        for (j, value) in requirement.values.iter().flatten().enumerate() {
            if let Err(e) = label_value(value) {
                out.push(
                    format!("{path}.matchExpressions[{i}].values[{j}]"),
                    format!("label value {value:?} {e}{no_object}"),
                );
            }
        }
    }
}

/// What is legal in `policy` but probably a mistake, whatever Deployment it is applied to.
pub(crate) fn warnings(policy: &SidecarPolicy, name: &str) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut warn = |field: String, message: String| {
        warnings.push(Warning {
            policy: name.to_owned(),
            field,
            message,
        });
    };
    for (i, sidecar) in policy.spec.sidecars.iter().enumerate() {
        if sidecar.startup_probe.is_none() {
            warn(
                format!("spec.sidecars[{i}].startupProbe"),
                format!(
                    "sidecar {:?} has no startupProbe, so the containers after it start as soon as its process has started, not when it is ready",
                    sidecar.name
                ),
            );
        }
    }
    for (path, container) in containers(policy) {
        let requests = container.resources.as_ref().and_then(|r| r.requests.as_ref());
        if requests.is_none_or(|r| r.is_empty()) {
            warn(
                format!("{path}.resources.requests"),
                format!(
                    "container {:?} sets no resource requests; injected containers add to the pod's requests, which skews scheduling and HPA/VPA decisions, so set them explicitly",
                    container.name
                ),
            );
        }
        if let Some(image) = container.image.as_deref().filter(|i| unpinned(i)) {
            warn(
                format!("{path}.image"),
                format!(
                    "container {:?} uses image {image:?} without a pinned tag or digest, so every node may run a different version",
                    container.name
                ),
            );
        }
    }
    warnings
}

pub(crate) const INIT_CONTAINERS: &str = "spec.initContainers";
pub(crate) const SIDECARS: &str = "spec.sidecars";

/// Every container of `policy` with its path: init containers first, then sidecars.
pub(crate) fn containers(policy: &SidecarPolicy) -> impl Iterator<Item = (Site<'static>, &Container)> {
    let spec = &policy.spec;
    let inits = spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| (Site::item(INIT_CONTAINERS, i), c));
    let sidecars = spec
        .sidecars
        .iter()
        .enumerate()
        .map(|(i, c)| (Site::item(SIDECARS, i), c));
    inits.chain(sidecars)
}

struct Problems<'a> {
    policy: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            kind: ProblemKind::Invalid,
            policy: self.policy.to_owned(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn bound(&mut self, field: &str, len: usize, max: u64) {
        if len as u64 > max {
            self.push(field, format!("has {len} entries; at most {max} are allowed"));
        }
    }

    /// `field` is formatted only when `value` is invalid.
    fn dns_label(&mut self, field: impl std::fmt::Display, value: &str) {
        if !is_dns_label(value) {
            self.push(
                field.to_string(),
                format!("{value:?} is not a valid name: use at most {DNS_LABEL_MAX} lower-case letters, digits and '-', starting and ending with a letter or digit"),
            );
        }
    }
}

/// RFC 1123 label, as Kubernetes requires of container and volume names.
pub(crate) fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= DNS_LABEL_MAX as usize
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name part.
fn qualified_name(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let subdomain_ok =
                !prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(is_dns_label);
            if !subdomain_ok {
                return Err(
                    "has an invalid prefix: it must be a lower-case DNS subdomain such as example.com",
                );
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !label_value_chars(name) {
        return Err(
            "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

fn label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || label_value_chars(value) {
        Ok(())
    } else {
        Err(
            "must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    }
}

fn label_value_chars(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An image reference without a digest whose tag is absent or `latest`.
fn unpinned(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    // The tag follows the last ':' after the last '/' (a ':' before it belongs to a registry port).
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_labels_no_object_can_have_are_problems() {
        let with_selector = |selector: serde_json::Value| -> Vec<String> {
            let policy: SidecarPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"selector": selector, "sidecars": [{"name": "s", "image": "s:1"}]},
            }))
            .unwrap();
            problems(&policy, "p")
                .iter()
                .map(Problem::field_message)
                .collect()
        };
        let good = serde_json::json!({
            "matchLabels": {"app": "web", "example.com/tier": ""},
            "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]}],
        });
        assert_eq!(with_selector(good), Vec::<String>::new());
        let found = with_selector(serde_json::json!({"matchLabels": {"app!": "web server"}}));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with(r#"spec.selector.matchLabels["app!"]: label key "app!" must be"#),
            "{found:?}"
        );
        assert!(
            found[1].contains(r#"label value "web server" must be"#),
            "{found:?}"
        );
        assert!(found[1].ends_with("no object can have such a label"), "{found:?}");
        let found = with_selector(serde_json::json!({
            "matchExpressions": [{"key": "-tier", "operator": "NotIn", "values": ["ok", "not ok"]}],
        }));
        assert_eq!(
            found
                .iter()
                .map(|f| f.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "spec.selector.matchExpressions[0].key",
                "spec.selector.matchExpressions[0].values[1]"
            ]
        );
    }

    #[test]
    fn rollout_settings_follow_the_schema() {
        let check = |rollout: serde_json::Value| {
            let mut policy: SidecarPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "sidecar.dev/v1alpha1", "kind": "SidecarPolicy",
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"selector": {}, "sidecars": [{"name": "s", "image": "s:1"}]},
            }))
            .unwrap();
            policy.spec.rollout = Some(serde_json::from_value(rollout).unwrap());
            problems(&policy, "p")
                .into_iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
        };
        for good in [
            serde_json::json!({"maxConcurrent": 3}),
            serde_json::json!({"maxConcurrent": "100%", "progressDeadlineSeconds": 600}),
            serde_json::json!({"acknowledgedRevision": "0123456789", "canary": {"selector": {"matchLabels": {"canary": "true"}}}}),
        ] {
            assert!(check(good.clone()).is_empty(), "{good}");
        }
        for (bad, field) in [
            (
                serde_json::json!({"maxConcurrent": 0}),
                "spec.rollout.maxConcurrent",
            ),
            (
                serde_json::json!({"maxConcurrent": "0%"}),
                "spec.rollout.maxConcurrent",
            ),
            (
                serde_json::json!({"maxConcurrent": "101%"}),
                "spec.rollout.maxConcurrent",
            ),
            (
                serde_json::json!({"maxConcurrent": "10"}),
                "spec.rollout.maxConcurrent",
            ),
            (
                serde_json::json!({"progressDeadlineSeconds": 0}),
                "spec.rollout.progressDeadlineSeconds",
            ),
            (
                serde_json::json!({"acknowledgedRevision": "latest"}),
                "spec.rollout.acknowledgedRevision",
            ),
        ] {
            assert_eq!(check(bad.clone()), [field], "{bad}");
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "log-shipper", "a1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn qualified_names() {
        for ok in ["app", "prometheus.io/scrape", "a.b-c_d", "example.com/x"] {
            assert!(qualified_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "x/", "Example.com/x", "-x", "a b", &"a".repeat(64)] {
            assert!(qualified_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_images() {
        for pinned in [
            "busybox:1.36",
            "registry:5000/app:1.0",
            "app@sha256:abc",
            "r:5000/app:v2@sha256:abc",
        ] {
            assert!(!unpinned(pinned), "{pinned}");
        }
        for floating in [
            "busybox",
            "busybox:latest",
            "registry:5000/app",
            "ghcr.io/x/y:latest",
        ] {
            assert!(unpinned(floating), "{floating}");
        }
    }
}
