//! ClusterSidecarPolicies rendered with SidecarPolicies: ordering, conflicts that name both kinds,
//! and exact removal when a namespace stops being selected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;
use sidecar_api::{ClusterSidecarPolicy, ClusterSidecarPolicySpec, SidecarPolicy};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{Guardrails, InjectionRecord, PolicySet, Refusal, Rendered};

use common::arbitrary::{deployment, policies};
use common::{init_names, sidecar_policy, web};

/// ClusterSidecarPolicy `name` for namespaces labelled `mesh: enabled`, with the spec of
/// `template` (a SidecarPolicy).
fn cluster(name: &str, template: &SidecarPolicy) -> ClusterSidecarPolicy {
    let selector: LabelSelector =
        serde_json::from_value(serde_json::json!({"matchLabels": {"mesh": "enabled"}})).unwrap();
    ClusterSidecarPolicy::new(
        name,
        ClusterSidecarPolicySpec {
            namespace_selector: selector,
            policy: template.spec.clone(),
        },
    )
}

fn demo(meshed: bool) -> NamespaceLabels {
    let mut ns = NamespaceLabels::named("demo");
    if meshed {
        ns.labels.insert("mesh".into(), "enabled".into());
    }
    ns
}

fn render(
    d: &Deployment,
    namespace: &NamespaceLabels,
    policies: &[SidecarPolicy],
    cluster: &[ClusterSidecarPolicy],
) -> Result<Rendered, Refusal> {
    PolicySet::for_namespace(
        namespace,
        policies,
        cluster,
        &Exclusions::default(),
        &Guardrails::default(),
    )
    .render(d)
}

#[test]
fn a_cluster_policy_applies_only_in_the_namespaces_it_selects() {
    let mesh = cluster("mesh", &sidecar_policy("unused", "proxy"));
    let rendered = render(&web(), &demo(true), &[], std::slice::from_ref(&mesh)).unwrap();
    assert_eq!(init_names(&rendered.deployment), ["proxy", "migrate"]);
    assert_eq!(rendered.applied(), ["ClusterSidecarPolicy/mesh"]);

    let untouched = render(&web(), &demo(false), &[], std::slice::from_ref(&mesh)).unwrap();
    assert_eq!(untouched.deployment, web());
    let excluded = PolicySet::for_namespace(
        &demo(true),
        &[],
        &[mesh],
        &Exclusions::new(["demo".to_owned()]),
        &Guardrails::default(),
    );
    assert_eq!(excluded.render(&web()).unwrap().deployment, web());
}

#[test]
fn at_equal_order_cluster_policies_go_first_and_order_still_decides() {
    let own = sidecar_policy("agent", "agent");
    let mesh = cluster("mesh", &sidecar_policy("unused", "proxy"));
    let rendered = render(
        &web(),
        &demo(true),
        std::slice::from_ref(&own),
        std::slice::from_ref(&mesh),
    )
    .unwrap();
    assert_eq!(init_names(&rendered.deployment), ["proxy", "agent", "migrate"]);
    assert_eq!(rendered.applied(), ["ClusterSidecarPolicy/mesh", "agent"]);

    let mut late = mesh;
    late.spec.policy.order = 10;
    let rendered = render(&web(), &demo(true), &[own], &[late]).unwrap();
    assert_eq!(init_names(&rendered.deployment), ["agent", "proxy", "migrate"]);
}

#[test]
fn a_namespaced_and_a_cluster_policy_of_the_same_name_are_two_policies() {
    let own = sidecar_policy("mesh", "agent");
    let mesh = cluster("mesh", &sidecar_policy("unused", "proxy"));
    let rendered = render(&web(), &demo(true), &[own], &[mesh]).unwrap();
    assert_eq!(rendered.applied(), ["ClusterSidecarPolicy/mesh", "mesh"]);
    let record = InjectionRecord::read(&rendered.deployment).unwrap().unwrap();
    assert!(
        record
            .entry("mesh")
            .unwrap()
            .injected
            .init_containers
            .contains("agent")
    );
    assert!(
        record
            .entry("ClusterSidecarPolicy/mesh")
            .unwrap()
            .injected
            .init_containers
            .contains("proxy")
    );
}

#[test]
fn the_same_container_name_from_both_kinds_is_a_conflict_naming_both() {
    let own = sidecar_policy("team-proxy", "istio-proxy");
    let mesh = cluster("mesh", &sidecar_policy("unused", "istio-proxy"));
    let refusal = render(&web(), &demo(true), &[own], &[mesh]).unwrap_err();
    let text = refusal.to_string();
    assert!(text.contains("ClusterSidecarPolicy \"mesh\""), "{text}");
    assert!(text.contains("SidecarPolicy \"team-proxy\""), "{text}");
}

#[test]
fn a_cluster_policy_with_an_invalid_namespace_selector_refuses_what_it_selects() {
    let mut mesh = cluster("mesh", &sidecar_policy("unused", "proxy"));
    mesh.spec.namespace_selector = serde_json::from_value(
        serde_json::json!({"matchExpressions": [{"key": "mesh", "operator": "Near"}]}),
    )
    .unwrap();
    let refusal = render(&web(), &demo(false), &[], &[mesh]).unwrap_err();
    assert_eq!(refusal.problems[0].policy, "ClusterSidecarPolicy/mesh");
    assert!(
        refusal.problems[0].field.starts_with("spec.namespaceSelector."),
        "{refusal}"
    );
}

#[test]
fn removing_the_namespace_label_removes_exactly_what_the_cluster_policy_added() {
    let own = sidecar_policy("agent", "agent");
    let mesh = cluster("mesh", &sidecar_policy("unused", "proxy"));
    let both = render(
        &web(),
        &demo(true),
        std::slice::from_ref(&own),
        std::slice::from_ref(&mesh),
    )
    .unwrap();
    let without = render(
        &both.deployment,
        &demo(false),
        std::slice::from_ref(&own),
        &[mesh],
    )
    .unwrap();
    let only_own = render(&web(), &demo(false), &[own], &[]).unwrap();
    assert_eq!(without.deployment, only_own.deployment);
}

/// Policies made cluster-wide by the bits of `cluster_mask`, the others kept namespaced.
fn split(ps: &[SidecarPolicy], cluster_mask: u8) -> (Vec<SidecarPolicy>, Vec<ClusterSidecarPolicy>) {
    let mut namespaced = Vec::new();
    let mut clustered = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        if cluster_mask & (1 << i) != 0 {
            clustered.push(cluster(p.metadata.name.as_deref().unwrap(), p));
        } else {
            namespaced.push(p.clone());
        }
    }
    (namespaced, clustered)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn render_across_both_kinds_is_idempotent(d in deployment(), ps in policies(), mask in any::<u8>()) {
        let (namespaced, clustered) = split(&ps, mask);
        if let Ok(once) = render(&d, &demo(true), &namespaced, &clustered) {
            let twice = render(&once.deployment, &demo(true), &namespaced, &clustered).expect("renders again");
            prop_assert_eq!(twice.deployment, once.deployment);
        }
    }

    #[test]
    fn unlabelling_the_namespace_equals_rendering_without_the_cluster_policies(
        d in deployment(), ps in policies(), mask in any::<u8>()
    ) {
        let (namespaced, clustered) = split(&ps, mask);
        if let (Ok(all), Ok(own)) = (
            render(&d, &demo(true), &namespaced, &clustered),
            render(&d, &demo(true), &namespaced, &[]),
        ) {
            let unlabelled = render(&all.deployment, &demo(false), &namespaced, &clustered)
                .expect("removing valid policies never conflicts");
            prop_assert_eq!(unlabelled.deployment, own.deployment);
            let restored = render(&all.deployment, &demo(false), &[], &clustered).expect("removal");
            prop_assert_eq!(restored.deployment, d);
        }
    }
}
