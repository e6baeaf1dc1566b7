//! The controller's path (plan from the compact facts, check against the stored owned fields,
//! aggregate recorded outcomes into status) against the offline path (render the full
//! Deployment, compare it, render every Deployment for status): the same answers, always.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use sidecar_api::{ClusterSidecarPolicy, ClusterSidecarPolicySpec, SidecarPolicy};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::outcome::{Outcome, OutcomeIndex, State};
use sidecar_core::rollout::Progress;
use sidecar_core::status::{cluster_policy_status, from_summary, summary_by_rendering};
use sidecar_core::{
    DeploymentFacts, Guardrails, PolicySet, apply_patch, init_container_order, is_up_to_date,
};

use common::arbitrary::{deployment, fleet, policies, with_server_defaults};

/// What the controller records after looking at `d` without writing.
fn observed(set: &PolicySet, d: &Deployment) -> Outcome {
    let facts = DeploymentFacts::of(d);
    let selected = set
        .matching_meta(&d.metadata)
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let carried = facts.carried();
    let (state, warnings) = match set.plan(&d.metadata, &facts) {
        Ok(plan) if plan.is_applied(&facts) => (State::Applied, plan.warnings),
        Ok(plan) => (State::Pending, plan.warnings),
        Err(refusal) => (State::Refused(refusal.problems), refusal.warnings),
    };
    Outcome {
        selected,
        carried,
        state,
        held: false,
        progress: Progress::Complete,
        warnings: set.deployment_warnings(&warnings),
    }
}

fn check_plan_equals_render(set: &PolicySet, d: &Deployment) -> Result<(), TestCaseError> {
    let facts = DeploymentFacts::of(d);
    match (set.plan(&d.metadata, &facts), set.render(d)) {
        (Ok(plan), Ok(rendered)) => {
            prop_assert_eq!(&plan.patch, &apply_patch(&rendered));
            prop_assert_eq!(&plan.record, &rendered.record);
            prop_assert_eq!(plan.init_order.clone(), init_container_order(&rendered));
            prop_assert_eq!(&plan.warnings, &rendered.warnings);
            prop_assert_eq!(plan.is_applied(&facts), is_up_to_date(d, &rendered));
        }
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        (plan, rendered) => prop_assert!(false, "plan {plan:?} but render {rendered:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn planning_from_facts_equals_rendering(d in deployment(), ps in policies()) {
        let set = PolicySet::new(&ps, &Guardrails::default());
        check_plan_equals_render(&set, &d)?;
        // And on what a render leaves, as stored: the common case of a controller at rest.
        if let Ok(rendered) = set.render(&d) {
            let stored = with_server_defaults(rendered.deployment);
            check_plan_equals_render(&set, &stored)?;
            let facts = DeploymentFacts::of(&stored);
            prop_assert!(set.plan(&stored.metadata, &facts).unwrap().is_applied(&facts));
            // The same Deployment with its init containers out of order is not up to date.
            let mut shuffled = stored.clone();
            let inits = shuffled.spec.template.spec.as_mut().and_then(|p| p.init_containers.as_mut());
            if let Some(inits) = inits.filter(|i| i.len() > 1) {
                inits.rotate_left(1);
                check_plan_equals_render(&set, &shuffled)?;
                let facts = DeploymentFacts::of(&shuffled);
                let plan = set.plan(&shuffled.metadata, &facts).unwrap();
                prop_assert_eq!(plan.is_applied(&facts), plan.init_order == facts.init_order);
            }
        }
    }

    #[test]
    fn a_narrower_policy_set_plans_like_a_render(d in deployment(), ps in policies(), keep in any::<u8>()) {
        // Deployments rendered against some policies, then planned against others: the
        // strip-then-inject path of the facts.
        let all = PolicySet::new(&ps, &Guardrails::default());
        if let Ok(rendered) = all.render(&d) {
            let kept: Vec<SidecarPolicy> = ps.iter().enumerate().filter(|(i, _)| keep & (1 << i) != 0).map(|(_, p)| p.clone()).collect();
            let some = PolicySet::new(&kept, &Guardrails::default());
            check_plan_equals_render(&some, &with_server_defaults(rendered.deployment))?;
        }
    }

    #[test]
    fn aggregated_status_equals_rendered_status(
        (ps, deployments) in policies().prop_flat_map(|ps| (Just(ps.clone()), fleet(ps)))
    ) {
        let set = PolicySet::new(&ps, &Guardrails::default());
        let mut index = OutcomeIndex::default();
        for d in &deployments {
            index.record("demo", d.metadata.name.as_deref().unwrap(), observed(&set, d));
        }
        let refs: Vec<&Deployment> = deployments.iter().collect();
        let now = Time(Timestamp::from_second(1_700_000_000).unwrap());
        for policy in &ps {
            let name = policy.metadata.name.as_deref().unwrap();
            let revision = set.revision(name).unwrap();
            let aggregated = index.summary("demo", name, revision);
            let rendered = summary_by_rendering(name, &set, &refs);
            prop_assert_eq!(&aggregated, &rendered);
            prop_assert_eq!(
                from_summary(policy, &set, &aggregated, None, &now),
                sidecar_core::policy_status(policy, &set, &refs, None, &now)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A ClusterSidecarPolicy's status from the outcomes recorded in every namespace equals the
    /// one computed by rendering every Deployment of every namespace; namespaces it does not
    /// select add nothing, and its messages name `namespace/name`.
    #[test]
    fn aggregated_cluster_status_equals_rendered_status(
        (ps, deployments) in policies().prop_flat_map(|ps| (Just(ps.clone()), fleet(ps)))
    ) {
        prop_assume!(!ps.is_empty());
        // The first policy's spec as a cluster policy for the namespaces labelled mesh=on; the
        // others stay namespaced policies of each namespace, so the two kinds meet.
        let cluster = ClusterSidecarPolicy::new(
            ps[0].metadata.name.as_deref().unwrap(),
            ClusterSidecarPolicySpec {
                namespace_selector: LabelSelector {
                    match_labels: Some([("mesh".to_owned(), "on".to_owned())].into()),
                    ..LabelSelector::default()
                },
                policy: ps[0].spec.clone(),
            },
        );
        let key = sidecar_core::cluster::key(cluster.metadata.name.as_deref().unwrap());
        let exclusions = Exclusions::default();
        let guardrails = Guardrails::default();
        let mut index = OutcomeIndex::default();
        let mut namespaces = Vec::new();
        for (name, mesh) in [("b", true), ("a", true), ("c", false)] {
            let mut labels = NamespaceLabels::named(name);
            if mesh {
                labels.labels.insert("mesh".to_owned(), "on".to_owned());
            }
            let mut own = ps[1..].to_vec();
            own.iter_mut().for_each(|p| p.metadata.namespace = Some(name.to_owned()));
            let set = PolicySet::for_namespace(&labels, &own, std::slice::from_ref(&cluster), &exclusions, &guardrails);
            let mut fleet = deployments.clone();
            fleet.iter_mut().for_each(|d| d.metadata.namespace = Some(name.to_owned()));
            for d in &fleet {
                index.record(name, d.metadata.name.as_deref().unwrap(), observed(&set, d));
            }
            namespaces.push((labels, set, fleet));
        }
        let namespaces: Vec<_> = namespaces
            .iter()
            .map(|(labels, set, fleet)| (labels, set, fleet.iter().collect::<Vec<&Deployment>>()))
            .collect();
        let now = Time(Timestamp::from_second(1_700_000_000).unwrap());
        let alone = PolicySet::for_cluster_policy(&cluster, &guardrails);
        let revision = alone.revision(&key).unwrap();
        let aggregated = index.summary_across(&key, revision);
        let mut from_index = from_summary(
            &sidecar_core::cluster::in_namespace(&cluster, ""),
            &alone,
            &aggregated,
            None,
            &now,
        );
        from_index.matched_namespaces = Some(2);
        let rendered = cluster_policy_status(&cluster, &namespaces, &exclusions, &guardrails, None, &now);
        prop_assert_eq!(&from_index, &rendered);
        let per_namespace = namespaces
            .iter()
            .filter(|(labels, _, _)| labels.name != "c")
            .map(|(_, set, fleet)| summary_by_rendering(&key, set, fleet).matched)
            .sum::<i32>();
        prop_assert_eq!(rendered.matched_deployments, per_namespace);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The index keeps its tallies as outcomes come and go: after any sequence of records and
    /// forgets, every summary equals that of an index that saw only the final outcomes.
    #[test]
    fn tallies_survive_any_order_of_changes(
        (first, then, deployments) in (policies(), policies()).prop_flat_map(|(a, b)| {
            let all: Vec<SidecarPolicy> = a.iter().chain(&b).cloned().collect();
            (Just(a), Just(b), fleet(all))
        }),
        gone in any::<u8>(),
    ) {
        let earlier = PolicySet::new(&first, &Guardrails::default());
        let later = PolicySet::new(&then, &Guardrails::default());
        let mut index = OutcomeIndex::default();
        let mut fresh = OutcomeIndex::default();
        for d in &deployments {
            index.record("demo", d.metadata.name.as_deref().unwrap(), observed(&earlier, d));
        }
        for (i, d) in deployments.iter().enumerate() {
            let name = d.metadata.name.as_deref().unwrap();
            if gone & (1 << i) != 0 {
                index.forget("demo", name);
            } else {
                index.record("demo", name, observed(&later, d));
                fresh.record("demo", name, observed(&later, d));
            }
        }
        for policy in first.iter().chain(&then) {
            let name = policy.metadata.name.as_deref().unwrap();
            let revision = sidecar_core::revision::of(policy);
            prop_assert_eq!(index.summary("demo", name, &revision), fresh.summary("demo", name, &revision));
            prop_assert_eq!(index.carried_revisions("demo", name), fresh.carried_revisions("demo", name));
            prop_assert_eq!(
                index.involving("demo", name).collect::<Vec<_>>(),
                fresh.involving("demo", name).collect::<Vec<_>>()
            );
        }
    }
}

/// The fleet generator must give the status property something to compare: Deployments that are
/// up to date, pending and refused, under policies that match some and not others.
#[test]
fn the_fleet_generator_covers_every_state() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut applied, mut pending, mut refused, mut unmatched) = (0, 0, 0, 0);
    for _ in 0..300 {
        let ps = policies().new_tree(&mut runner).unwrap().current();
        let deployments = fleet(ps.clone()).new_tree(&mut runner).unwrap().current();
        let set = PolicySet::new(&ps, &Guardrails::default());
        for d in &deployments {
            let outcome = observed(&set, d);
            match outcome.state {
                State::Refused(_) => refused += 1,
                _ if outcome.selected.is_empty() => unmatched += 1,
                State::Applied => applied += 1,
                _ => pending += 1,
            }
        }
    }
    eprintln!("{applied} applied, {pending} pending, {refused} refused, {unmatched} unmatched");
    for (what, count) in [
        ("applied", applied),
        ("pending", pending),
        ("refused", refused),
        ("unmatched", unmatched),
    ] {
        assert!(count >= 30, "only {count} {what} Deployments");
    }
}
