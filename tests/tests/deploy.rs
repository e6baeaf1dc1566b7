//! The install manifests under `deploy/`, checked offline. Everything the base, each component and
//! the example overlay render parses into its Kubernetes type without losing a field, and the
//! install keeps its promises: least-privilege RBAC (as docs/operations.md lists it), a hardened
//! pod, flags the binary accepts, probes and Service on the port it serves, the current CRD. The
//! e2e suite (`e2e_install.rs`) installs the same manifests on a real API server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assertion is what a test is for

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use k8s_openapi::api::admissionregistration::v1::{MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sidecar_operator::cli::{Cli, Command, LogFormat, RunArgs};

mod support {
    pub mod kustomize;
}
use support::kustomize::{build, build_inline, deploy_dir, find};

/// The components under deploy/components, each checked below.
const COMPONENTS: [&str; 5] = [
    "admission-hold",
    "guardrails",
    "log-format-text",
    "resources",
    "watch-namespaces",
];

fn base() -> Vec<Value> {
    build(&deploy_dir().join("base"))
}

/// The base with one component, as a user's overlay would have it.
fn base_with(component: &str) -> Vec<Value> {
    build_inline(|deploy| {
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
             components:\n  - {}\n",
            deploy.join("base").display(),
            deploy.join("components").join(component).display()
        )
    })
}

fn example_overlay() -> Vec<Value> {
    build(&deploy_dir().join("overlays/example"))
}

fn typed<T: DeserializeOwned>(object: &Value) -> T {
    serde_json::from_value(object.clone()).unwrap()
}

fn operator(objects: &[Value]) -> Deployment {
    typed(find(objects, "Deployment", "sidecar-operator"))
}

fn container(deployment: &Deployment) -> Container {
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1, "the operator's pod has one container");
    pod.containers[0].clone()
}

/// The `run` flags of the operator's container, parsed by the binary's own command line.
fn run_args(objects: &[Value]) -> RunArgs {
    let container = container(&operator(objects));
    let args = container.args.unwrap_or_default();
    let cli = Cli::try_parse_from(std::iter::once("sidecar-operator".to_owned()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the operator rejects the Deployment's args {args:?}:\n{e}"));
    match cli.command {
        Command::Run(run) => run,
        other => panic!("the Deployment runs {other:?}, not `run`"),
    }
}

/// Parses `object` into `T` and back; any field `T` does not know (a typo, a wrong level) is lost
/// on the way and reported by its path.
fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let parsed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(parsed).map_err(|e| e.to_string())?;
    match first_difference(object, &back, "") {
        Some(path) => Err(format!("`{path}` does not survive parsing")),
        None => Ok(()),
    }
}

/// The path of the first place where `a` and `b` differ (an absent key and `null` are the same).
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|key| {
                let (left, right) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                first_difference(left, right, &format!("{path}.{key}"))
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (left, right))| first_difference(left, right, &format!("{path}[{i}]"))),
        // JSON Schema bounds are floats in k8s-openapi: 1000 and 1000.0 are the same.
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then(|| path.to_owned()),
        _ => (a != b).then(|| path.to_owned()),
    }
}

/// Every object parses into its k8s-openapi type, field for field.
fn assert_all_parse(objects: &[Value]) {
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let parsed = match kind {
            "Namespace" => round_trip::<Namespace>(object),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
            "ServiceAccount" => round_trip::<ServiceAccount>(object),
            "ClusterRole" => round_trip::<ClusterRole>(object),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(object),
            "Role" => round_trip::<Role>(object),
            "RoleBinding" => round_trip::<RoleBinding>(object),
            "Deployment" => round_trip::<Deployment>(object),
            "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(object),
            "Service" => round_trip::<Service>(object),
            "MutatingAdmissionPolicy" => round_trip::<MutatingAdmissionPolicy>(object),
            "MutatingAdmissionPolicyBinding" => round_trip::<MutatingAdmissionPolicyBinding>(object),
            other => Err(format!("unexpected kind {other:?}")),
        };
        if let Err(e) = parsed {
            panic!("{kind} {}: {e}", object["metadata"]["name"]);
        }
    }
}

#[test]
fn every_rendered_object_parses_into_its_kubernetes_type() {
    assert_all_parse(&base());
    assert_all_parse(&example_overlay());
    for component in COMPONENTS {
        assert_all_parse(&base_with(component));
    }
}

#[test]
fn deploy_dir_itself_installs_the_base_with_the_admission_hold() {
    assert_eq!(
        build(&deploy_dir()),
        base_with("admission-hold"),
        "`kubectl apply -k deploy/` must install the base and the admission hold"
    );
}

/// The namespaces a binding's namespaceSelector names with `kubernetes.io/metadata.name`, and
/// the operator of that requirement.
fn named_namespaces(binding: &Value) -> (String, BTreeSet<String>) {
    let binding: MutatingAdmissionPolicyBinding = typed(binding);
    let selector = binding
        .spec
        .unwrap()
        .match_resources
        .unwrap()
        .namespace_selector
        .unwrap();
    let expressions = selector.match_expressions.unwrap();
    assert_eq!(expressions.len(), 1, "{expressions:?}");
    assert_eq!(expressions[0].key, "kubernetes.io/metadata.name");
    (
        expressions[0].operator.clone(),
        expressions[0].values.clone().unwrap().into_iter().collect(),
    )
}

#[test]
fn the_admission_hold_never_holds_where_nobody_releases() {
    let objects = base_with("admission-hold");
    let policy: MutatingAdmissionPolicy =
        typed(find(&objects, "MutatingAdmissionPolicy", "sidecar-operator-hold"));
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.failure_policy.as_deref(),
        Some("Ignore"),
        "a CEL error must never block a Deployment"
    );
    let param = spec.param_kind.unwrap();
    assert_eq!(
        (param.api_version.as_deref(), param.kind.as_deref()),
        (Some("sidecar.dev/v1alpha1"), Some("SidecarPolicy"))
    );
    let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["deployments".to_owned()][..])
    );
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["CREATE".to_owned(), "UPDATE".to_owned()][..])
    );

    let binding = find(
        &objects,
        "MutatingAdmissionPolicyBinding",
        "sidecar-operator-hold",
    );
    let typed_binding: MutatingAdmissionPolicyBinding = typed(binding);
    let param_ref = typed_binding.spec.unwrap().param_ref.unwrap();
    assert_eq!(param_ref.parameter_not_found_action.as_deref(), Some("Allow"));
    let (operator, excluded) = named_namespaces(binding);
    let own = operator_namespace(&objects);
    assert_eq!(operator, "NotIn");
    assert_eq!(excluded, BTreeSet::from(["kube-system".to_owned(), own]));

    // The hold for ClusterSidecarPolicies: their kind as parameters, and never where the operator
    // injects nothing (its exclusions and its own namespace).
    let cluster: MutatingAdmissionPolicy = typed(find(
        &objects,
        "MutatingAdmissionPolicy",
        "sidecar-operator-hold-cluster",
    ));
    let spec = cluster.spec.unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Ignore"));
    let param = spec.param_kind.unwrap();
    assert_eq!(
        (param.api_version.as_deref(), param.kind.as_deref()),
        (Some("sidecar.dev/v1alpha1"), Some("ClusterSidecarPolicy"))
    );
    let binding = find(
        &objects,
        "MutatingAdmissionPolicyBinding",
        "sidecar-operator-hold-cluster",
    );
    let typed_binding: MutatingAdmissionPolicyBinding = typed(binding);
    let param_ref = typed_binding.spec.unwrap().param_ref.unwrap();
    assert_eq!(param_ref.namespace, None, "cluster-scoped parameters");
    let (operator_, excluded) = named_namespaces(binding);
    assert_eq!(operator_, "NotIn");
    let mut never = BTreeSet::from([operator_namespace(&objects)]);
    never.extend(run_args(&objects).exclusions.exclude_namespaces);
    assert_eq!(
        excluded, never,
        "the binding excludes what --exclude-namespace excludes"
    );

    // The operator may read the binding (to say at start whether holding is active), by name.
    let role: ClusterRole = typed(find(&objects, "ClusterRole", "sidecar-operator-admission-hold"));
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        [grant(
            "admissionregistration.k8s.io",
            "mutatingadmissionpolicybindings",
            &[sidecar_operator::controller::ADMISSION_HOLD_BINDING],
            &["get"]
        )]
    );
}

fn operator_namespace(objects: &[Value]) -> String {
    operator(objects).metadata.namespace.unwrap()
}

#[test]
fn watch_namespaces_narrows_the_admission_hold_to_the_watched_namespaces() {
    let objects = build_inline(|deploy| {
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
             components:\n  - {}\n  - {}\n",
            deploy.join("base").display(),
            deploy.join("components/admission-hold").display(),
            deploy.join("components/watch-namespaces").display()
        )
    });
    let watched: Vec<String> = run_args(&objects).namespaces;
    let (operator, held) = named_namespaces(find(
        &objects,
        "MutatingAdmissionPolicyBinding",
        "sidecar-operator-hold",
    ));
    assert_eq!(operator, "In");
    assert_eq!(
        held,
        watched.iter().cloned().collect::<BTreeSet<_>>(),
        "the hold must cover exactly the namespaces the operator watches"
    );
    // The operator's own check at start agrees.
    let binding: MutatingAdmissionPolicyBinding = typed(find(
        &objects,
        "MutatingAdmissionPolicyBinding",
        "sidecar-operator-hold",
    ));
    let selector = binding.spec.unwrap().match_resources.unwrap().namespace_selector;
    assert_eq!(
        sidecar_operator::controller::unwatched_hold(selector.as_ref(), &watched),
        None
    );
    assert!(sidecar_operator::controller::unwatched_hold(selector.as_ref(), &watched[..1]).is_some());
}

#[test]
fn the_parse_check_catches_a_misplaced_field() {
    let objects = base();
    let mut deployment = find(&objects, "Deployment", "sidecar-operator").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] =
        Value::Bool(true);
    let error = round_trip::<Deployment>(&deployment).unwrap_err();
    assert!(error.contains("readOnlyRootFS"), "{error}");
}

#[test]
fn every_component_is_checked() {
    let found: BTreeSet<String> = std::fs::read_dir(deploy_dir().join("components"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let checked: BTreeSet<String> = COMPONENTS.iter().map(|c| (*c).to_owned()).collect();
    assert_eq!(
        found, checked,
        "add the new component to COMPONENTS and check it here"
    );
}

#[test]
fn base_installs_the_operator_and_nothing_else() {
    let objects = base();
    let mut kinds: Vec<(String, String)> = objects
        .iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap().to_owned();
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            (kind, name)
        })
        .collect();
    kinds.sort();
    let expected = [
        ("ClusterRole", "sidecar-operator"),
        ("ClusterRole", "sidecar-operator-cluster"),
        ("ClusterRole", "sidecar-operator-cluster-policy-admin"),
        ("ClusterRole", "sidecar-operator-edit"),
        ("ClusterRole", "sidecar-operator-view"),
        ("ClusterRoleBinding", "sidecar-operator"),
        ("ClusterRoleBinding", "sidecar-operator-cluster"),
        ("CustomResourceDefinition", "clustersidecarpolicies.sidecar.dev"),
        ("CustomResourceDefinition", "sidecarpolicies.sidecar.dev"),
        ("Deployment", "sidecar-operator"),
        ("Namespace", "sidecar-system"),
        ("PodDisruptionBudget", "sidecar-operator"),
        ("Role", "sidecar-operator-leader-election"),
        ("RoleBinding", "sidecar-operator-leader-election"),
        ("Service", "sidecar-operator-metrics"),
        ("ServiceAccount", "sidecar-operator"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, n)| ((*k).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(kinds, expected);

    // Everything namespaced lives in the operator's namespace, which enforces the restricted
    // Pod Security Standard.
    let namespace: Namespace = typed(find(&objects, "Namespace", "sidecar-system"));
    let labels = namespace.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    for object in &objects {
        let cluster_scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&object["kind"].as_str().unwrap());
        let expected = if cluster_scoped {
            Value::Null
        } else {
            "sidecar-system".into()
        };
        assert_eq!(object["metadata"]["namespace"], expected, "{}", object["kind"]);
    }
}

#[test]
fn base_ships_the_crds_the_rust_types_generate() {
    let objects = base();
    for (yaml, name) in [
        (sidecar_operator::crd::crd_yaml(), "sidecarpolicies.sidecar.dev"),
        (
            sidecar_operator::crd::cluster_crd_yaml(),
            "clustersidecarpolicies.sidecar.dev",
        ),
    ] {
        let generated: Value = serde_norway::from_str(&yaml.unwrap()).unwrap();
        let shipped = find(&objects, "CustomResourceDefinition", name);
        let difference = first_difference(&shipped["spec"], &generated["spec"], ".spec");
        assert_eq!(
            difference, None,
            "the CRD {name} in deploy/base differs from `sidecar-operator crd`"
        );
    }
}

/// One RBAC grant: API group, resource, resource names, verbs.
type Grant = (String, String, Vec<String>, BTreeSet<String>);

fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> Vec<Grant> {
    let mut grants = Vec::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                grants.push((
                    group.clone(),
                    resource.clone(),
                    rule.resource_names.clone().unwrap_or_default(),
                    rule.verbs.iter().cloned().collect(),
                ));
            }
        }
    }
    grants
}

fn grant(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> Grant {
    (
        group.to_owned(),
        resource.to_owned(),
        names.iter().map(|n| (*n).to_owned()).collect(),
        verbs.iter().map(|v| (*v).to_owned()).collect(),
    )
}

#[test]
fn rbac_is_the_documented_least_privilege() {
    let objects = base();
    let cluster_role: ClusterRole = typed(find(&objects, "ClusterRole", "sidecar-operator"));
    let role: Role = typed(find(&objects, "Role", "sidecar-operator-leader-election"));
    let cluster_only: ClusterRole = typed(find(&objects, "ClusterRole", "sidecar-operator-cluster"));
    let cluster_wide = grants(cluster_role.rules.as_deref().unwrap_or_default());
    let in_own_namespace = grants(role.rules.as_deref().unwrap_or_default());
    let for_cluster_policies = grants(cluster_only.rules.as_deref().unwrap_or_default());

    assert_eq!(
        cluster_wide,
        [
            grant("apps", "deployments", &[], &["list", "watch", "patch"]),
            grant("sidecar.dev", "sidecarpolicies", &[], &["list", "watch"]),
            grant("sidecar.dev", "sidecarpolicies/status", &[], &["patch"]),
            grant(
                "apps",
                "controllerrevisions",
                &[],
                &["list", "watch", "create", "patch", "delete"]
            ),
            grant("events.k8s.io", "events", &[], &["create"]),
            grant("autoscaling", "horizontalpodautoscalers", &[], &["list", "watch"]),
            grant(
                "autoscaling.k8s.io",
                "verticalpodautoscalers",
                &[],
                &["list", "watch"]
            ),
        ]
    );
    assert_eq!(
        for_cluster_policies,
        [
            grant("sidecar.dev", "clustersidecarpolicies", &[], &["list", "watch"]),
            grant("sidecar.dev", "clustersidecarpolicies/status", &[], &["patch"]),
            grant("", "namespaces", &[], &["list", "watch"]),
        ]
    );
    // The Lease is the only thing granted by name, and only in the operator's own namespace.
    let lease = run_args(&objects).leader_election_lease;
    assert_eq!(
        in_own_namespace,
        [
            grant("coordination.k8s.io", "leases", &[], &["create"]),
            grant("coordination.k8s.io", "leases", &[&lease], &["get", "patch"]),
        ]
    );

    // docs/operations.md lists each grant as a table row: `group` `resource` | verbs | why.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md")).unwrap();
    for (group, resource, names, verbs) in cluster_wide
        .iter()
        .chain(&in_own_namespace)
        .chain(&for_cluster_policies)
    {
        let names: String = names.iter().map(|n| format!(" `{n}`")).collect();
        let start = format!("| `{group}` `{resource}`{names} |");
        let row = docs
            .lines()
            .find(|line| line.starts_with(&start))
            .unwrap_or_else(|| panic!("docs/operations.md has no RBAC row starting {start}"));
        for verb in verbs {
            assert!(
                row.contains(verb.as_str()),
                "docs/operations.md: {row} does not list {verb}"
            );
        }
    }
}

#[test]
fn bindings_grant_the_roles_to_the_operator_only() {
    for objects in [base(), base_with("watch-namespaces"), example_overlay()] {
        let account: ServiceAccount = typed(find(&objects, "ServiceAccount", "sidecar-operator"));
        let deployment = operator(&objects);
        let pod = deployment.spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name, account.metadata.name);
        for binding in objects
            .iter()
            .filter(|o| ["RoleBinding", "ClusterRoleBinding"].contains(&o["kind"].as_str().unwrap()))
        {
            let role_ref = &binding["roleRef"];
            let role = find(
                &objects,
                role_ref["kind"].as_str().unwrap(),
                role_ref["name"].as_str().unwrap(),
            );
            if role["kind"] == "Role" {
                assert_eq!(role["metadata"]["namespace"], binding["metadata"]["namespace"]);
            }
            let subjects = binding["subjects"].as_array().unwrap();
            assert_eq!(subjects.len(), 1, "{binding}");
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"].as_str(), account.metadata.name.as_deref());
            assert_eq!(
                subjects[0]["namespace"].as_str(),
                account.metadata.namespace.as_deref()
            );
        }
    }
}

#[test]
fn namespace_roles_may_write_sidecar_policies_and_only_cluster_roles_cluster_policies() {
    let objects = base();
    for (name, aggregated_to) in [
        ("sidecar-operator-edit", &["admin", "edit"][..]),
        ("sidecar-operator-view", &["view"][..]),
    ] {
        let role: ClusterRole = typed(find(&objects, "ClusterRole", name));
        let labels = role.metadata.labels.unwrap_or_default();
        for target in aggregated_to {
            let key = format!("rbac.authorization.k8s.io/aggregate-to-{target}");
            assert_eq!(
                labels.get(&key).map(String::as_str),
                Some("true"),
                "{name}: {key}"
            );
        }
        for (group, resource, _, _) in grants(role.rules.as_deref().unwrap_or_default()) {
            assert_eq!(group, "sidecar.dev");
            assert!(
                resource.starts_with("sidecarpolicies"),
                "{name} grants {resource}"
            );
        }
    }
    // Nothing aggregates ClusterSidecarPolicies into a namespace role.
    for object in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        let role: ClusterRole = typed(object);
        let aggregated = role
            .metadata
            .labels
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"));
        let cluster_policies = grants(role.rules.as_deref().unwrap_or_default())
            .iter()
            .any(|(_, resource, _, _)| resource.starts_with("clustersidecarpolicies"));
        assert!(
            !(aggregated && cluster_policies),
            "{:?} aggregates ClusterSidecarPolicies into a namespace role",
            role.metadata.name
        );
    }
}

#[test]
fn the_operator_pod_is_hardened() {
    for objects in [base(), example_overlay()] {
        let deployment = operator(&objects);
        let pod = deployment.spec.clone().template.spec.unwrap();
        let pod_security = pod.security_context.clone().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_ne!(pod_security.run_as_user, Some(0));
        assert!(pod.host_network.is_none() && pod.host_pid.is_none() && pod.volumes.is_none());

        let container = container(&deployment);
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_ne!(security.privileged, Some(true));
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let capabilities = security.capabilities.unwrap();
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
        assert!(capabilities.add.is_none());

        let resources = container.resources.unwrap();
        for set in [resources.requests.unwrap(), resources.limits.unwrap()] {
            assert!(set.contains_key("cpu") && set.contains_key("memory"), "{set:?}");
        }
    }
}

#[test]
fn two_replicas_elect_a_leader_and_a_drain_keeps_one() {
    let objects = base();
    let deployment = operator(&objects);
    assert_eq!(deployment.spec.replicas, Some(2));
    let args = run_args(&objects);
    assert!(
        args.leader_election,
        "two replicas without leader election would both write"
    );
    assert!(args.namespaces.is_empty(), "the base watches every namespace");
    assert_eq!(args.log_format, LogFormat::Json);

    // The Lease lives in the pod's namespace and is held under the pod's name.
    let container = container(&deployment);
    let env = container.env.unwrap_or_default();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));

    let pdb: PodDisruptionBudget = typed(find(&objects, "PodDisruptionBudget", "sidecar-operator"));
    let pdb = pdb.spec.unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    let pod_labels = deployment.spec.template.metadata.unwrap().labels.unwrap();
    let selected = pdb.selector.unwrap().match_labels.unwrap();
    assert!(selected.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
}

#[test]
fn probes_and_the_metrics_service_reach_the_port_the_operator_serves() {
    let objects = base();
    let served = run_args(&objects).http_addr.port();
    let deployment = operator(&objects);
    let container = container(&deployment);
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.container_port == i32::from(served))
        .expect("the container declares the port of --http-addr");
    let named = IntOrString::String(port.name.clone().expect("the port is named"));
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!((get.path.as_deref(), &get.port), (Some(path), &named));
    }

    let service: Service = typed(find(&objects, "Service", "sidecar-operator-metrics"));
    let spec = service.spec.unwrap();
    assert_eq!(spec.ports.unwrap()[0].target_port.as_ref(), Some(&named));
    let pod_labels = deployment.spec.template.metadata.unwrap().labels.unwrap();
    assert!(
        spec.selector
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    );
}

#[test]
fn watch_namespaces_swaps_the_cluster_binding_for_one_per_watched_namespace() {
    let objects = base_with("watch-namespaces");
    assert!(
        objects.iter().all(|o| o["kind"] != "ClusterRoleBinding"),
        "a namespaced install must not keep the cluster-wide grant"
    );
    let watched: BTreeSet<String> = run_args(&objects).namespaces.into_iter().collect();
    let bound: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["kind"] == "ClusterRole")
        .map(|o| {
            assert_eq!(o["roleRef"]["name"], "sidecar-operator");
            o["metadata"]["namespace"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(!watched.is_empty());
    assert_eq!(
        watched, bound,
        "each watched namespace needs the grant, and no other"
    );
    find(&objects, "RoleBinding", "sidecar-operator-leader-election");
}

#[test]
fn watch_namespaces_drops_the_cluster_policy_grant_and_hold() {
    // The example overlay has the admission hold, then watch-namespaces.
    let objects = example_overlay();
    find(&objects, "MutatingAdmissionPolicy", "sidecar-operator-hold");
    for (kind, name) in [
        ("ClusterRoleBinding", "sidecar-operator-cluster"),
        ("MutatingAdmissionPolicy", "sidecar-operator-hold-cluster"),
        ("MutatingAdmissionPolicyBinding", "sidecar-operator-hold-cluster"),
    ] {
        assert!(
            !objects
                .iter()
                .any(|o| o["kind"] == kind && o["metadata"]["name"] == name),
            "a namespaced install keeps {kind} {name}"
        );
    }
}

#[test]
fn guardrails_component_allows_what_the_mesh_example_needs_and_nothing_more() {
    let guardrails = run_args(&base_with("guardrails")).guardrails.to_guardrails();
    assert!(guardrails.allow_run_as_root);
    assert!(!guardrails.allow_privileged && !guardrails.allow_host_path);
    let capabilities: Vec<&str> = guardrails
        .allowed_capabilities
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(capabilities, ["NET_ADMIN", "NET_RAW"]);
    // The same flags render the mesh example (its render.args), so that policy is allowed.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/u8-service-mesh-proxy/render.args"),
    )
    .unwrap();
    let args = container(&operator(&base_with("guardrails"))).args.unwrap();
    for flag in example.split_whitespace() {
        let name = flag.split('=').next().unwrap();
        assert!(
            args.iter().any(|a| a.starts_with(name)),
            "the component lacks {flag}"
        );
    }
}

#[test]
fn log_format_component_switches_to_text_and_keeps_the_other_flags() {
    let base_args = container(&operator(&base())).args.unwrap();
    let text = container(&operator(&base_with("log-format-text"))).args.unwrap();
    assert_eq!(
        run_args(&base_with("log-format-text")).log_format,
        LogFormat::Text
    );
    assert_eq!(base_args.len(), text.len());
}

/// Bytes or millicores of the quantities the manifests use (`Mi`, `Gi`, `m`, whole cores).
fn amount(quantity: &str) -> u64 {
    let number = |s: &str| s.parse::<u64>().unwrap();
    match quantity {
        q if q.ends_with("Gi") => number(&q[..q.len() - 2]) << 30,
        q if q.ends_with("Mi") => number(&q[..q.len() - 2]) << 20,
        q if q.ends_with('m') => number(&q[..q.len() - 1]),
        q => number(q) * 1000,
    }
}

#[test]
fn resources_component_raises_every_request_and_limit() {
    let resources = |objects: &[Value]| container(&operator(objects)).resources.unwrap();
    let (small, large) = (resources(&base()), resources(&base_with("resources")));
    for (before, after) in [(small.requests, large.requests), (small.limits, large.limits)] {
        let (before, after) = (before.unwrap(), after.unwrap());
        for (name, quantity) in &before {
            assert!(
                amount(&after[name].0) > amount(&quantity.0),
                "{name}: {quantity:?} -> {:?}",
                after[name]
            );
        }
    }
    let large = resources(&base_with("resources"));
    let (requests, limits) = (large.requests.unwrap(), large.limits.unwrap());
    for (name, request) in &requests {
        assert!(
            amount(&request.0) <= amount(&limits[name].0),
            "{name}: request above limit"
        );
    }
}

#[test]
fn example_overlay_combines_every_component_with_an_image_of_your_own() {
    let objects = example_overlay();
    let image = container(&operator(&objects)).image.unwrap();
    assert_eq!(image, "registry.example.com/platform/sidecar-operator:0.1.0");
    let args = run_args(&objects);
    assert!(args.leader_election && !args.namespaces.is_empty() && args.guardrails.allow_run_as_root);
    assert_eq!(args.log_format, LogFormat::Text);
    // The base's image is pinned to the workspace's version.
    let base_image = container(&operator(&base())).image.unwrap();
    assert_eq!(
        base_image,
        format!(
            "ghcr.io/sidecar-dev/sidecar-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}
