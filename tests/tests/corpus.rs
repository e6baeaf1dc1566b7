//! The bad-policy corpus (`tests/corpus/`), offline: every case is refused by the layer its
//! header names, with the message its header pins, and nothing else refuses it first.
//!
//! - `schema` and `cel` cases go through what the API server's admission does with the
//!   checked-in CRDs (`crds/`): strict decoding and the structural schema (`support::admission`),
//!   then the CEL rules (kube-cel).
//! - `engine` cases must pass all of that (the API server stores them); then `sidecar_core`
//!   (`PolicySet::for_namespace`, default guardrails) must name the expected problem of the
//!   case's policy, either on the policy itself or in the refusal of a Deployment, and leave every
//!   Deployment of the case as it is (a refused render returns none; a render that goes through
//!   must change nothing). The same Deployments render without that policy, so the problem is
//!   the policy's and not the fixture's.
//!
//! `e2e_corpus.rs` sends the same cases to a real API server and a running operator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use sidecar_api::{ClusterSidecarPolicy, SidecarPolicy};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{Guardrails, PolicySet};

mod support {
    pub mod admission;
    pub mod corpus;
}
use support::admission::{Refusals, admit, crd_schema, decoding_error};
use support::corpus::{Case, Layer, cases};

/// Documents without a namespace are in this one, as `sidecar-operator render` puts them in
/// `default`; the cases' Namespace documents are named so.
const NAMESPACE: &str = "demo";

#[test]
fn every_case_is_refused_by_its_layer_with_its_message() {
    let cases = cases();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).err().map(|why| format!("{}: {why}", case.path)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_has_at_least_100_cases_in_every_layer_and_both_kinds() {
    let cases = cases();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let per_layer: BTreeMap<Layer, usize> = cases.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.layer).or_default() += 1;
        m
    });
    for layer in Layer::ALL {
        assert!(per_layer.get(&layer).copied().unwrap_or(0) >= 10, "{per_layer:?}");
    }
    let cluster = cases
        .iter()
        .filter(|c| c.kind() == "ClusterSidecarPolicy")
        .count();
    assert!(cluster >= 5, "only {cluster} ClusterSidecarPolicy cases");
    // Each case's policy has a name of its own, so that e2e_corpus can send them all to one
    // namespace (and one cluster) and tell their outcomes apart.
    let mut names: Vec<(String, String)> = cases.iter().map(|c| (c.kind().to_owned(), c.name())).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "two cases share a kind and a name");
}

/// The check fails when a case's message is wrong: a doctored expectation must not pass.
#[test]
fn a_wrong_expectation_fails() {
    for mut case in cases().into_iter().step_by(7) {
        case.expect.push_str(" (not in the message)");
        assert!(check(&case).is_err(), "{} passed with a wrong message", case.path);
    }
}

fn check(case: &Case) -> Result<(), String> {
    let refusals = admission(case);
    let found = |messages: &[String]| messages.iter().any(|m| m.contains(&case.expect));
    match case.layer {
        Layer::Schema if found(&refusals.decoding) || found(&refusals.schema) => Ok(()),
        Layer::Cel if refusals.decoding.is_empty() && refusals.schema.is_empty() && found(&refusals.cel) => {
            Ok(())
        }
        Layer::Schema | Layer::Cel => Err(format!(
            "expected {:?} from the {} layer, the API server would say {:#?}",
            case.expect,
            case.layer,
            refusals.all()
        )),
        Layer::Engine if !refusals.is_empty() => Err(format!(
            "an engine case must be admitted, the API server would say {:#?}",
            refusals.all()
        )),
        Layer::Engine => engine(case),
    }
}

/// What the API server's admission says about the case's policy.
fn admission(case: &Case) -> Refusals {
    match (&case.documents, case.policy()) {
        (Err(yaml), _) => Refusals {
            decoding: vec![decoding_error(yaml)],
            ..Default::default()
        },
        (Ok(_), Some(policy)) => admit(crd_schema(case.kind()), policy),
        (Ok(_), None) => Refusals {
            decoding: vec!["no document".to_owned()],
            ..Default::default()
        },
    }
}

/// An engine case: every Deployment refused, with the expected problem of the case's policy.
fn engine(case: &Case) -> Result<(), String> {
    let policy = case.policy().unwrap();
    let key = match case.kind() {
        "ClusterSidecarPolicy" => sidecar_core::cluster::key(&case.name()),
        _ => case.name(),
    };
    let mut deployments = Vec::new();
    let mut policies = Vec::new();
    let mut cluster_policies = Vec::new();
    let mut namespace = NamespaceLabels::named(NAMESPACE);
    for document in case.documents.as_ref().unwrap() {
        if document != policy && is_policy(document) {
            // The case's other policies are good ones: the API server stores them.
            let refusals = admit(crd_schema(document["kind"].as_str().unwrap()), document);
            if !refusals.is_empty() {
                return Err(format!(
                    "a supporting policy is not admitted: {:?}",
                    refusals.all()
                ));
            }
        }
        let mut document = document.clone();
        if document["kind"] != "Namespace" && document["kind"] != "ClusterSidecarPolicy" {
            document["metadata"]["namespace"] = NAMESPACE.into();
        }
        match document["kind"].as_str().unwrap_or_default() {
            "Deployment" => deployments.push(from::<Deployment>(&document)?),
            "SidecarPolicy" => policies.push(from::<SidecarPolicy>(&document)?),
            "ClusterSidecarPolicy" => cluster_policies.push(from::<ClusterSidecarPolicy>(&document)?),
            "Namespace" => namespace = NamespaceLabels::of(&from::<Namespace>(&document)?.metadata),
            other => return Err(format!("unexpected kind {other:?}")),
        }
    }
    if deployments.is_empty() {
        return Err("an engine case needs a Deployment to refuse".to_owned());
    }
    let exclusions = Exclusions::new(["kube-system".to_owned()]);
    let guardrails = Guardrails::default();
    let set = PolicySet::for_namespace(&namespace, &policies, &cluster_policies, &exclusions, &guardrails);
    let is_case_policy = |p: &SidecarPolicy| p.metadata.name.as_deref() == Some(case.name().as_str());
    let without: Vec<SidecarPolicy> = policies.iter().filter(|p| !is_case_policy(p)).cloned().collect();
    let cluster_without: Vec<ClusterSidecarPolicy> = cluster_policies
        .iter()
        .filter(|p| {
            p.metadata.name.as_deref() != Some(case.name().as_str()) || case.kind() != "ClusterSidecarPolicy"
        })
        .cloned()
        .collect();
    let without = PolicySet::for_namespace(&namespace, &without, &cluster_without, &exclusions, &guardrails);
    // What the engine says about the policy: its problems on its own (what its status shows even
    // when it selects nothing) and the refusals of the Deployments.
    let mut said: Vec<String> = set.problems(&key).iter().map(ToString::to_string).collect();
    for deployment in &deployments {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        match set.render(deployment) {
            Err(refusal) => said.extend(
                refusal
                    .problems
                    .iter()
                    .filter(|p| p.policy == key)
                    .map(ToString::to_string),
            ),
            // A policy that selects nothing (say, an impossible selector) may leave a Deployment
            // rendered, and then as it was.
            Ok(rendered) if rendered.changes(deployment) => {
                return Err(format!("Deployment {name:?} was changed, not refused"));
            }
            Ok(_) => {}
        }
        if let Err(refusal) = without.render(deployment) {
            return Err(format!(
                "Deployment {name:?} is refused even without the case's policy: {refusal}"
            ));
        }
    }
    if !said.iter().any(|m| m.contains(&case.expect)) {
        return Err(format!(
            "expected a problem of {key:?} containing {:?}, the engine said {said:#?}",
            case.expect
        ));
    }
    Ok(())
}

fn is_policy(document: &Value) -> bool {
    matches!(
        document["kind"].as_str(),
        Some("SidecarPolicy" | "ClusterSidecarPolicy")
    )
}

fn from<T: serde::de::DeserializeOwned>(document: &Value) -> Result<T, String> {
    serde_json::from_value(document.clone()).map_err(|e| format!("{} does not decode: {e}", document["kind"]))
}
