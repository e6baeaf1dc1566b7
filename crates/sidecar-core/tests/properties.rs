//! Property tests over generated Deployments and policies: idempotence, exact removal, order
//! invariants and independence from the order in which policies are listed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

mod common;

use k8s_openapi::api::apps::v1::Deployment;
use proptest::prelude::*;
use sidecar_api::{Placement, SidecarPolicy};

use common::arbitrary::{deployment, policies};
use common::{init_names, render};

/// The injected init container names, in the order the documented rules give.
fn expected_injection(d: &Deployment, policies: &[SidecarPolicy], placement: Placement) -> Vec<String> {
    let mut matched: Vec<&SidecarPolicy> = sidecar_core::matching_policies(d, policies);
    matched.retain(|p| p.spec.placement == placement);
    let mut sorted = matched.clone();
    sorted.sort_by(|a, b| (a.spec.order, &a.metadata.name).cmp(&(b.spec.order, &b.metadata.name)));
    sorted
        .iter()
        .flat_map(|p| {
            p.spec
                .init_containers
                .iter()
                .chain(&p.spec.sidecars)
                .map(|c| c.name.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn render_is_idempotent(d in deployment(), ps in policies()) {
        if let Ok(once) = render(&d, &ps) {
            let twice = render(&once.deployment, &ps).expect("a rendered Deployment renders again");
            prop_assert_eq!(twice.deployment, once.deployment);
        }
    }

    #[test]
    fn removing_every_policy_restores_the_original(d in deployment(), ps in policies()) {
        if let Ok(rendered) = render(&d, &ps) {
            let restored = render(&rendered.deployment, &[]).expect("removal never conflicts");
            prop_assert_eq!(restored.deployment, d);
        }
    }

    #[test]
    fn removing_some_policies_equals_rendering_the_rest(d in deployment(), ps in policies(), keep in any::<u8>()) {
        let kept: Vec<SidecarPolicy> = ps.iter().enumerate().filter(|(i, _)| keep & (1 << i) != 0).map(|(_, p)| p.clone()).collect();
        if let (Ok(all), Ok(some)) = (render(&d, &ps), render(&d, &kept)) {
            let shrunk = render(&all.deployment, &kept).expect("a subset of valid policies still renders");
            prop_assert_eq!(shrunk.deployment, some.deployment);
        }
    }

    #[test]
    fn listing_order_of_policies_does_not_matter(d in deployment(), ps in policies()) {
        let mut reversed = ps.clone();
        reversed.reverse();
        prop_assert_eq!(render(&d, &ps), render(&d, &reversed));
    }

    #[test]
    fn init_containers_follow_the_ordering_rules(d in deployment(), ps in policies()) {
        if let Ok(rendered) = render(&d, &ps) {
            let owner = init_names(&d);
            let before = expected_injection(&d, &ps, Placement::BeforeAppInitContainers);
            let after = expected_injection(&d, &ps, Placement::AfterAppInitContainers);
            let expected: Vec<String> = before.into_iter().chain(owner).chain(after).collect();
            prop_assert_eq!(init_names(&rendered.deployment), expected);
        }
    }

    #[test]
    fn conflicts_and_refusals_are_deterministic(d in deployment(), ps in policies()) {
        // The same inputs always give the same outcome, refusal text included.
        prop_assert_eq!(render(&d, &ps), render(&d, &ps));
    }
}

/// The properties above only say something if many generated cases render and inject; this
/// guards the generators against drifting into mostly-conflicting inputs.
#[test]
fn generators_produce_mostly_successful_non_trivial_renders() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let (mut ok, mut injected, mut refused) = (0, 0, 0);
    for _ in 0..500 {
        let d = deployment().new_tree(&mut runner).unwrap().current();
        let ps = policies().new_tree(&mut runner).unwrap().current();
        match render(&d, &ps) {
            Ok(r) if !r.applied().is_empty() => {
                ok += 1;
                injected += 1;
            }
            Ok(_) => ok += 1,
            Err(e) => {
                if refused < 6 {
                    eprintln!("{e}");
                }
                refused += 1
            }
        }
    }
    eprintln!("generated 500 cases: {ok} rendered ({injected} injecting), {refused} refused");
    assert!(ok >= 150, "only {ok} of 500 cases rendered");
    assert!(injected >= 100, "only {injected} of 500 cases injected something");
    assert!(refused >= 25, "only {refused} of 500 cases exercised conflicts");
}
