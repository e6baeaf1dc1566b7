//! The `engine` target: arbitrary policies (namespaced and cluster-wide) and a Deployment, built
//! from small shapes whose names come from small pools, so that the fuzzer reaches collisions
//! (conflicts), selectors that match and miss, invalid values and earlier renders instead of
//! spending its time on random strings that never meet.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HostPathVolumeSource, PodSpec, PodTemplateSpec, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use sidecar_api::{
    AppContainersPatch, ClusterSidecarPolicy, ClusterSidecarPolicySpec, INJECTED_ANNOTATION, Placement,
    PodSettings, SidecarPolicy, SidecarPolicySpec,
};
use sidecar_core::cluster::{Exclusions, NamespaceLabels};
use sidecar_core::{DeploymentFacts, Guardrails, PolicySet, apply_patch, init_container_order};

use crate::{Violation, same};

const NAMESPACE: &str = "demo";
// Each pool ends with a value the engine must refuse or skip, so refusals are reached too.
const CONTAINERS: [&str; 6] = ["app", "web", "proxy", "log", "init", "Bad_Name"];
const POLICIES: [&str; 4] = ["alpha", "beta", "gamma", "Not/A-Name"];
const VOLUMES: [&str; 4] = ["data", "logs", "certs", "-bad"];
const PATHS: [&str; 5] = ["/data", "/logs", "/etc/tls", "/data/sub", "relative"];
const ENV: [&str; 4] = ["MODE", "TOKEN", "PORT", "1BAD"];
const LABEL_KEYS: [&str; 4] = ["app", "team", "tier", "sidecar.dev/inject"];
const LABEL_VALUES: [&str; 4] = ["web", "api", "false", "bad value"];
const ANNOTATION_KEYS: [&str; 3] = ["prometheus.io/scrape", "note", "sidecar.dev/inject"];
const OPERATORS: [&str; 5] = ["In", "NotIn", "Exists", "DoesNotExist", "Near"];
const PORTS: [i32; 5] = [80, 8080, 9090, 15001, 0];
const CAPABILITIES: [&str; 2] = ["NET_ADMIN", "SYS_TIME"];

/// The `i`th of `pool`, wrapping around.
fn pick<T: Copy>(pool: &[T], i: u8) -> T {
    pool[usize::from(i) % pool.len()]
}

/// At most `n` of `items` (a few are enough to collide; more only slow the fuzzer down).
fn few<T>(items: &[T], n: usize) -> &[T] {
    &items[..items.len().min(n)]
}

/// `None` for an empty list or map, as the API server leaves them out.
fn nonempty<C: IntoIterator + FromIterator<C::Item>>(items: impl IntoIterator<Item = C::Item>) -> Option<C> {
    let mut items = items.into_iter().peekable();
    items.peek()?;
    Some(items.collect())
}

fn map(pairs: &[(u8, u8)], keys: &[&str], values: &[&str]) -> Option<BTreeMap<String, String>> {
    nonempty(
        few(pairs, 3)
            .iter()
            .map(|&(k, v)| (pick(keys, k).to_owned(), pick(values, v).to_owned())),
    )
}

/// One fuzz case: the Deployment as its owner wrote it, the policies to render it with, and
/// what it carried before (an earlier render's record, or one someone wrote by hand).
#[derive(Arbitrary, Debug)]
pub struct Case {
    pub deployment: DeploymentShape,
    pub policies: Vec<PolicyShape>,
    pub earlier: Earlier,
    pub guardrails: GuardrailShape,
}

#[derive(Arbitrary, Debug)]
pub enum Earlier {
    /// The owner's Deployment as it is.
    Nothing,
    /// Rendered with these policies first (same name pool: a policy may have changed since).
    Rendered(Vec<PolicyShape>),
    /// Carrying a record annotation nobody rendered.
    Written(RecordShape),
}

#[derive(Arbitrary, Debug)]
pub struct GuardrailShape {
    privileged: bool,
    host_path: bool,
    run_as_root: bool,
    net_admin: bool,
}

#[derive(Arbitrary, Debug)]
pub struct DeploymentShape {
    labels: Vec<(u8, u8)>,
    annotations: Vec<(u8, u8)>,
    template_labels: Vec<(u8, u8)>,
    template_annotations: Vec<(u8, u8)>,
    share_process_namespace: Option<bool>,
    init_containers: Vec<ContainerShape>,
    containers: Vec<ContainerShape>,
    volumes: Vec<VolumeShape>,
}

#[derive(Arbitrary, Debug, Default)]
pub struct ContainerShape {
    name: u8,
    ports: Vec<u8>,
    env: Vec<u8>,
    mounts: Vec<MountShape>,
    restart_always: bool,
    security: Security,
}

#[derive(Arbitrary, Debug, Default)]
pub enum Security {
    #[default]
    Unset,
    Privileged,
    Root,
    Capability(u8),
}

#[derive(Arbitrary, Debug)]
pub struct MountShape {
    volume: u8,
    path: u8,
    read_only: bool,
}

#[derive(Arbitrary, Debug)]
pub struct VolumeShape {
    name: u8,
    source: VolumeSource,
}

#[derive(Arbitrary, Debug)]
pub enum VolumeSource {
    EmptyDir,
    HostPath,
    ConfigMap,
}

#[derive(Arbitrary, Debug)]
pub struct PolicyShape {
    name: u8,
    /// A ClusterSidecarPolicy, whose namespaceSelector selects the namespace or not.
    cluster: Option<bool>,
    order: i8,
    after_app_init_containers: bool,
    match_labels: Vec<(u8, u8)>,
    match_expressions: Vec<(u8, u8, Vec<u8>)>,
    init_containers: Vec<ContainerShape>,
    sidecars: Vec<ContainerShape>,
    volumes: Vec<VolumeShape>,
    app_containers: Vec<AppPatchShape>,
    pod: Option<PodShape>,
}

#[derive(Arbitrary, Debug)]
pub struct AppPatchShape {
    containers: Vec<u8>,
    mounts: Vec<MountShape>,
    env: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct PodShape {
    share_process_namespace: Option<bool>,
    labels: Vec<(u8, u8)>,
    annotations: Vec<(u8, u8)>,
}

/// A record in the annotation's JSON form, with names from the same pools.
#[derive(Arbitrary, Debug)]
pub struct RecordShape {
    /// Written without a version: a first-release record.
    legacy: bool,
    policies: Vec<RecordEntryShape>,
}

#[derive(Arbitrary, Debug)]
pub struct RecordEntryShape {
    name: u8,
    init_containers: Vec<u8>,
    volumes: Vec<u8>,
    /// Env var names by app container.
    env: Vec<(u8, u8)>,
}

impl ContainerShape {
    fn build(&self) -> Container {
        let security_context = match self.security {
            Security::Unset => None,
            Security::Privileged => Some(SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            }),
            Security::Root => Some(SecurityContext {
                run_as_user: Some(0),
                ..SecurityContext::default()
            }),
            Security::Capability(i) => Some(SecurityContext {
                capabilities: Some(Capabilities {
                    add: Some(vec![pick(&CAPABILITIES, i).to_owned()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
        };
        Container {
            name: pick(&CONTAINERS, self.name).to_owned(),
            image: Some("image:1".into()),
            ports: nonempty(few(&self.ports, 2).iter().map(|&p| ContainerPort {
                container_port: pick(&PORTS, p),
                ..ContainerPort::default()
            })),
            env: nonempty(few(&self.env, 3).iter().map(|&e| env(e))),
            volume_mounts: nonempty(few(&self.mounts, 3).iter().map(MountShape::build)),
            restart_policy: self.restart_always.then(|| "Always".into()),
            security_context,
            ..Container::default()
        }
    }
}

fn env(i: u8) -> EnvVar {
    EnvVar {
        name: pick(&ENV, i).to_owned(),
        value: Some("v".into()),
        ..EnvVar::default()
    }
}

impl MountShape {
    fn build(&self) -> VolumeMount {
        VolumeMount {
            name: pick(&VOLUMES, self.volume).to_owned(),
            mount_path: pick(&PATHS, self.path).to_owned(),
            read_only: self.read_only.then_some(true),
            ..VolumeMount::default()
        }
    }
}

impl VolumeShape {
    fn build(&self) -> Volume {
        let mut volume = Volume {
            name: pick(&VOLUMES, self.name).to_owned(),
            ..Volume::default()
        };
        match self.source {
            VolumeSource::EmptyDir => volume.empty_dir = Some(EmptyDirVolumeSource::default()),
            VolumeSource::HostPath => {
                volume.host_path = Some(HostPathVolumeSource {
                    path: "/var/log".into(),
                    ..HostPathVolumeSource::default()
                })
            }
            VolumeSource::ConfigMap => {
                volume.config_map = Some(ConfigMapVolumeSource {
                    name: "config".into(),
                    ..ConfigMapVolumeSource::default()
                })
            }
        }
        volume
    }
}

impl DeploymentShape {
    pub fn build(&self) -> Deployment {
        let mut containers: Vec<Container> = few(&self.containers, 3)
            .iter()
            .map(ContainerShape::build)
            .collect();
        if containers.is_empty() {
            // The API server requires one; a template without is not a Deployment it stores.
            containers.push(ContainerShape::default().build());
        }
        let pod = Some(PodSpec {
            containers,
            init_containers: nonempty(few(&self.init_containers, 3).iter().map(ContainerShape::build)),
            volumes: nonempty(few(&self.volumes, 3).iter().map(VolumeShape::build)),
            share_process_namespace: self.share_process_namespace,
            ..PodSpec::default()
        });
        let template_meta = ObjectMeta {
            labels: map(&self.template_labels, &LABEL_KEYS, &LABEL_VALUES),
            annotations: map(&self.template_annotations, &ANNOTATION_KEYS, &LABEL_VALUES),
            ..ObjectMeta::default()
        };
        let mut deployment = Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some(NAMESPACE.into()),
                labels: map(&self.labels, &LABEL_KEYS, &LABEL_VALUES),
                annotations: map(&self.annotations, &ANNOTATION_KEYS, &LABEL_VALUES),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        deployment.spec.template = PodTemplateSpec {
            metadata: (template_meta != ObjectMeta::default()).then_some(template_meta),
            spec: pod,
        };
        deployment
    }
}

impl PolicyShape {
    fn spec(&self) -> SidecarPolicySpec {
        let match_expressions = few(&self.match_expressions, 2)
            .iter()
            .map(|(key, operator, values)| LabelSelectorRequirement {
                key: pick(&LABEL_KEYS, *key).to_owned(),
                operator: pick(&OPERATORS, *operator).to_owned(),
                values: nonempty(few(values, 2).iter().map(|&v| pick(&LABEL_VALUES, v).to_owned())),
            });
        // Mostly small orders that tie and interleave; the extremes are out of range.
        let order = match self.order {
            i8::MIN => 5000,
            order => i32::from(order % 3),
        };
        SidecarPolicySpec {
            selector: LabelSelector {
                match_labels: map(&self.match_labels, &LABEL_KEYS, &LABEL_VALUES),
                match_expressions: nonempty(match_expressions),
            },
            order,
            placement: if self.after_app_init_containers {
                Placement::AfterAppInitContainers
            } else {
                Placement::BeforeAppInitContainers
            },
            init_containers: few(&self.init_containers, 2)
                .iter()
                .map(ContainerShape::build)
                .collect(),
            sidecars: few(&self.sidecars, 2).iter().map(ContainerShape::build).collect(),
            volumes: few(&self.volumes, 2).iter().map(VolumeShape::build).collect(),
            app_containers: few(&self.app_containers, 2)
                .iter()
                .map(|patch| AppContainersPatch {
                    container_names: few(&patch.containers, 2)
                        .iter()
                        .map(|&c| pick(&CONTAINERS, c).to_owned())
                        .collect(),
                    volume_mounts: few(&patch.mounts, 2).iter().map(MountShape::build).collect(),
                    env: few(&patch.env, 2).iter().map(|&e| env(e)).collect(),
                })
                .collect(),
            pod: self.pod.as_ref().map(|pod| PodSettings {
                share_process_namespace: pod.share_process_namespace,
                labels: map(&pod.labels, &LABEL_KEYS, &LABEL_VALUES).unwrap_or_default(),
                annotations: map(&pod.annotations, &ANNOTATION_KEYS, &LABEL_VALUES).unwrap_or_default(),
            }),
            // Not part of a render: rollout and history only.
            revision_history_limit: None,
            hold_new_deployments: None,
            rollout: None,
        }
    }
}

/// SidecarPolicies and ClusterSidecarPolicies built from `shapes`, as the policy set of the
/// namespace `demo`.
fn policy_set(
    shapes: &[PolicyShape],
    guardrails: &Guardrails,
) -> (PolicySet, Vec<SidecarPolicy>, Vec<ClusterSidecarPolicy>) {
    let mut namespaced = Vec::new();
    let mut cluster = Vec::new();
    let mut taken = std::collections::BTreeSet::new();
    for shape in few(shapes, 3) {
        let name = pick(&POLICIES, shape.name);
        // The API server keeps one object per kind and name (the render command refuses two):
        // with two, the engine's order among them would depend on the listing.
        if !taken.insert((shape.cluster.is_some(), name)) {
            continue;
        }
        match shape.cluster {
            None => {
                let mut policy = SidecarPolicy::new(name, shape.spec());
                policy.metadata.namespace = Some(NAMESPACE.into());
                namespaced.push(policy);
            }
            Some(selects) => {
                let namespace = if selects { NAMESPACE } else { "elsewhere" };
                let namespace_selector = LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_owned(),
                        namespace.to_owned(),
                    )])),
                    ..LabelSelector::default()
                };
                let spec = ClusterSidecarPolicySpec {
                    namespace_selector,
                    policy: shape.spec(),
                };
                cluster.push(ClusterSidecarPolicy::new(name, spec));
            }
        }
    }
    let set = PolicySet::for_namespace(
        &NamespaceLabels::named(NAMESPACE),
        &namespaced,
        &cluster,
        &Exclusions::new([]),
        guardrails,
    );
    (set, namespaced, cluster)
}

impl RecordShape {
    fn annotation(&self) -> String {
        let policies = few(&self.policies, 3).iter().map(|entry| {
            let names = |items: &[u8], pool: &[&'static str]| {
                few(items, 2).iter().map(|&i| pick(pool, i)).collect::<Vec<_>>()
            };
            let env: BTreeMap<&str, [&str; 1]> = few(&entry.env, 2)
                .iter()
                .map(|&(c, e)| (pick(&CONTAINERS, c), [pick(&ENV, e)]))
                .collect();
            serde_json::json!({
                "name": pick(&POLICIES, entry.name),
                "initContainers": names(&entry.init_containers, &CONTAINERS),
                "volumes": names(&entry.volumes, &VOLUMES),
                "env": env,
            })
        });
        let record = if self.legacy {
            // The first release listed what all policies injected together.
            serde_json::json!({"policies": policies.map(|p| p["name"].clone()).collect::<Vec<_>>(), "initContainers": ["log"]})
        } else {
            serde_json::json!({"version": 1, "policies": policies.collect::<Vec<_>>()})
        };
        record.to_string()
    }
}

impl GuardrailShape {
    fn build(&self) -> Guardrails {
        let mut guardrails = Guardrails {
            allow_privileged: self.privileged,
            allow_host_path: self.host_path,
            allow_run_as_root: self.run_as_root,
            ..Guardrails::default()
        };
        if self.net_admin {
            guardrails.allow_capability("NET_ADMIN");
        }
        guardrails
    }
}

/// `data` as a [`Case`]; see [`check_case`]. Bytes too few for a case are no case.
pub fn check(data: &[u8]) -> Result<(), Violation> {
    match Case::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(case) => check_case(&case).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// How a case ended, for the seed test's coverage check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Rendered, and at least one policy applied.
    Injected,
    /// Rendered, nothing applied (no policy selects it, or all were removed).
    Untouched,
    Refused,
}

/// Renders the case's Deployment, as stored (after an earlier render, or with a written record),
/// with the case's policies, and checks: no panic; the controller's plan (from the cached
/// facts) agrees with the render; the order the policies are listed in does not matter; a
/// render renders again to itself; removing every policy gives back the owner's Deployment
/// (after an earlier render: exactly what the owner wrote); a refusal names its problems.
pub fn check_case(case: &Case) -> Result<Ending, Violation> {
    let guardrails = case.guardrails.build();
    let owners = case.deployment.build();
    let (set, namespaced, cluster) = policy_set(&case.policies, &guardrails);
    let nothing = PolicySet::new(&[], &guardrails);

    let stored = match &case.earlier {
        Earlier::Nothing => owners.clone(),
        Earlier::Rendered(earlier) => match policy_set(earlier, &guardrails).0.render(&owners) {
            Ok(rendered) => {
                removal_gives(
                    &nothing,
                    &rendered.deployment,
                    &owners,
                    "the earlier render, removed, is not the owner's Deployment",
                )?;
                rendered.deployment
            }
            Err(_) => owners.clone(),
        },
        Earlier::Written(record) => {
            let mut stored = owners.clone();
            stored
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(INJECTED_ANNOTATION.to_owned(), record.annotation());
            stored
        }
    };

    let rendered = set.render(&stored);
    plan_agrees(&set, &stored, &rendered)?;

    let mut reversed_ns = namespaced.clone();
    reversed_ns.reverse();
    let mut reversed_cluster = cluster.clone();
    reversed_cluster.reverse();
    let reversed = PolicySet::for_namespace(
        &NamespaceLabels::named(NAMESPACE),
        &reversed_ns,
        &reversed_cluster,
        &Exclusions::new([]),
        &guardrails,
    );
    same(
        "the policies' listing order changed the render",
        &reversed.render(&stored),
        &rendered,
    )?;

    match rendered {
        Ok(rendered) => {
            let again = set
                .render(&rendered.deployment)
                .map_err(|e| format!("a rendered Deployment was refused on the next render: {e}"))?;
            same(
                "rendering twice differs from rendering once",
                &again.deployment,
                &rendered.deployment,
            )?;
            plan_agrees(&set, &rendered.deployment, &Ok(again))?;

            let expected = match &case.earlier {
                // The owner's part of what was stored: a hand-written record strips what it lists.
                Earlier::Written(_) => {
                    nothing
                        .render(&stored)
                        .map_err(|e| format!("the stored record rendered but does not strip: {e}"))?
                        .deployment
                }
                _ => owners,
            };
            removal_gives(
                &nothing,
                &rendered.deployment,
                &expected,
                "removing every policy did not restore the owner's Deployment",
            )?;
            Ok(if rendered.record.policies.is_empty() {
                Ending::Untouched
            } else {
                Ending::Injected
            })
        }
        Err(refusal) => {
            if refusal.problems.is_empty() {
                return Err(format!("a refusal without a problem: {refusal:?}"));
            }
            Ok(Ending::Refused)
        }
    }
}

/// Rendering `deployment` with no policy gives `expected`.
fn removal_gives(
    nothing: &PolicySet,
    deployment: &Deployment,
    expected: &Deployment,
    what: &str,
) -> Result<(), Violation> {
    let removed = nothing
        .render(deployment)
        .map_err(|e| format!("removing every policy was refused: {e}"))?;
    same(what, &removed.deployment, expected)
}

/// The controller's path (plan from the facts its cache keeps) gives what the render gives, and
/// a Deployment that already is the render needs no write.
fn plan_agrees(
    set: &PolicySet,
    stored: &Deployment,
    rendered: &Result<sidecar_core::Rendered, sidecar_core::Refusal>,
) -> Result<(), Violation> {
    let facts = DeploymentFacts::expand(&DeploymentFacts::compact(stored));
    match (set.plan(&stored.metadata, &facts), rendered) {
        (Ok(plan), Ok(rendered)) => {
            same(
                "plan and render send different patches",
                &plan.patch,
                &apply_patch(rendered),
            )?;
            same(
                "plan and render record differently",
                &plan.record,
                &rendered.record,
            )?;
            let order: Vec<&str> = plan.init_order.iter().map(String::as_str).collect();
            same(
                "plan and render order differently",
                &order,
                &init_container_order(rendered),
            )?;
            if &rendered.deployment == stored && !plan.is_applied(&facts) {
                return Err("the Deployment is its own render, but the plan would write it".into());
            }
            Ok(())
        }
        (Err(a), Err(b)) => same("plan and render refuse differently", &a, b),
        (plan, rendered) => Err(format!("plan {plan:?} but render {rendered:?}")),
    }
}
