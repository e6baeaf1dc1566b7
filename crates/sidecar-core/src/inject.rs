//! What the matching policies add to one Deployment's pod template, checked against what the
//! Deployment already has and against each other.
//!
//! Every name, port, mount path, env var, label and pod setting is "claimed" by the Deployment's
//! owner or by the first policy that adds it; a second claim is a conflict that names both
//! parties. Nothing is overwritten.
//!
//! The planner reads the owner's pod template through [`PodFacts`], so the controller plans from
//! its compact cache; the result is applied to a full template (offline `render`) or turned
//! straight into the server-side apply configuration (the controller), never both.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec, Volume, VolumeMount};
use serde_json::{Map, Value, json};
use sidecar_api::{INJECTED_ANNOTATION, Placement, SidecarPolicy};

use crate::apply::to_value;
use crate::facts::{PodFacts, Port, SIDECAR_RESTART_POLICY};
use crate::problem::{Problem, ProblemKind, Warning};
use crate::record::{Injected, InjectionRecord, PolicyEntry};
use crate::site::Site;
use crate::validate::{SIDECARS, containers};

/// Everything the matching policies add, policy by policy, ready to be applied to the owner's
/// pod template or sent as an apply configuration.
///
/// It borrows from the policies: Kubernetes containers and volumes are kilobytes each, so they are
/// cloned at most once, straight into the rendered pod template.
#[derive(Debug, Default)]
pub(crate) struct Injection<'p> {
    /// In injection order.
    parts: Vec<Part<'p>>,
}

/// What one policy adds.
#[derive(Debug)]
struct Part<'p> {
    name: &'p str,
    revision: &'p str,
    placement: Placement,
    /// Its init containers and sidecars, with whether each is a sidecar.
    containers: Vec<(&'p Container, bool)>,
    volumes: Vec<&'p Volume>,
    /// Additions to app containers, by index in `spec.template.spec.containers`.
    mounts: BTreeMap<usize, Vec<&'p VolumeMount>>,
    env: BTreeMap<usize, Vec<&'p EnvVar>>,
    labels: BTreeMap<&'p str, &'p str>,
    annotations: BTreeMap<&'p str, &'p str>,
    share_process_namespace: Option<bool>,
}

impl<'p> Injection<'p> {
    /// Injected containers placed before the owner's init containers, then those after them.
    fn containers(&self, placement: Placement) -> impl Iterator<Item = &(&'p Container, bool)> {
        self.parts
            .iter()
            .filter(move |part| part.placement == placement)
            .flat_map(|part| &part.containers)
    }

    /// The record of this injection into a template whose app containers are `owner`'s.
    pub(crate) fn record(&self, owner: &PodFacts) -> InjectionRecord {
        let name_of = |i: &usize| owner.containers[*i].name.clone();
        let policies = self
            .parts
            .iter()
            .map(|part| PolicyEntry {
                name: part.name.to_owned(),
                revision: part.revision.to_owned(),
                injected: Injected {
                    init_containers: part.containers.iter().map(|(c, _)| c.name.clone()).collect(),
                    volumes: part.volumes.iter().map(|v| v.name.clone()).collect(),
                    mounts: part
                        .mounts
                        .iter()
                        .map(|(i, m)| (name_of(i), m.iter().map(|m| m.mount_path.clone()).collect()))
                        .collect(),
                    env: part
                        .env
                        .iter()
                        .map(|(i, e)| (name_of(i), e.iter().map(|e| e.name.clone()).collect()))
                        .collect(),
                    pod_labels: part.labels.keys().map(|k| (*k).to_owned()).collect(),
                    pod_annotations: part.annotations.keys().map(|k| (*k).to_owned()).collect(),
                    share_process_namespace: part.share_process_namespace.is_some(),
                },
            })
            .collect();
        InjectionRecord {
            policies,
            legacy: None,
        }
    }

    /// The names of all init containers once injected into a template with `owner`'s.
    pub(crate) fn init_order(&self, owner: &PodFacts) -> Vec<String> {
        let names = |placement| self.containers(placement).map(|(c, _)| c.name.clone());
        names(Placement::BeforeAppInitContainers)
            .chain(owner.init_containers.iter().map(|c| c.name.clone()))
            .chain(names(Placement::AfterAppInitContainers))
            .collect()
    }

    /// Adds the injection to `template` (the owner's template, with nothing injected, whose
    /// facts were given to [`plan`]).
    pub(crate) fn apply(&self, template: &mut PodTemplateSpec) {
        let labels: BTreeMap<&str, &str> = self.parts.iter().flat_map(|p| p.labels.clone()).collect();
        let annotations: BTreeMap<&str, &str> =
            self.parts.iter().flat_map(|p| p.annotations.clone()).collect();
        if !labels.is_empty() || !annotations.is_empty() {
            let metadata = template.metadata.get_or_insert_default();
            extend_map(&mut metadata.labels, &labels);
            extend_map(&mut metadata.annotations, &annotations);
        }
        let pod = template.spec.get_or_insert_default();
        if let Some(share) = self.parts.iter().find_map(|p| p.share_process_namespace) {
            pod.share_process_namespace = Some(share);
        }
        let before: Vec<_> = self.containers(Placement::BeforeAppInitContainers).collect();
        let after: Vec<_> = self.containers(Placement::AfterAppInitContainers).collect();
        if !before.is_empty() || !after.is_empty() {
            let own = pod.init_containers.take().unwrap_or_default();
            let mut all = Vec::with_capacity(before.len() + own.len() + after.len());
            all.extend(before.iter().map(|(c, sidecar)| as_injected(c, *sidecar)));
            all.extend(own);
            all.extend(after.iter().map(|(c, sidecar)| as_injected(c, *sidecar)));
            pod.init_containers = Some(all);
        }
        let volumes: Vec<&Volume> = self
            .parts
            .iter()
            .flat_map(|p| p.volumes.iter().copied())
            .collect();
        extend_list(&mut pod.volumes, &volumes);
        for (i, container) in pod.containers.iter_mut().enumerate() {
            let mounts: Vec<&VolumeMount> = self
                .parts
                .iter()
                .flat_map(|p| p.mounts.get(&i).into_iter().flatten().copied())
                .collect();
            extend_list(&mut container.volume_mounts, &mounts);
            let env: Vec<&EnvVar> = self
                .parts
                .iter()
                .flat_map(|p| p.env.get(&i).into_iter().flatten().copied())
                .collect();
            extend_list(&mut container.env, &env);
        }
    }

    /// The server-side apply configuration of this injection into Deployment `name` in
    /// `namespace`, whose owner's template is `owner`, recorded as `record`: exactly what
    /// `apply_patch` makes of the rendered Deployment, without rendering it.
    pub(crate) fn patch(
        &self,
        name: &str,
        namespace: &str,
        owner: &PodFacts,
        record: &InjectionRecord,
    ) -> Value {
        let mut metadata = json!({"name": name, "namespace": namespace});
        let mut patch = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        if record.is_empty() {
            patch["metadata"] = metadata;
            return patch;
        }
        metadata["annotations"] = json!({ INJECTED_ANNOTATION: record.to_annotation() });
        patch["metadata"] = metadata;

        let mut template = Map::new();
        let mut pod_metadata = Map::new();
        let labels = strings(self.parts.iter().flat_map(|p| p.labels.iter()));
        if !labels.is_empty() {
            pod_metadata.insert("labels".into(), Value::Object(labels));
        }
        let annotations = strings(self.parts.iter().flat_map(|p| p.annotations.iter()));
        if !annotations.is_empty() {
            pod_metadata.insert("annotations".into(), Value::Object(annotations));
        }
        if !pod_metadata.is_empty() {
            template.insert("metadata".into(), Value::Object(pod_metadata));
        }

        let mut pod = Map::new();
        let init: Vec<Value> = self
            .containers(Placement::BeforeAppInitContainers)
            .chain(self.containers(Placement::AfterAppInitContainers))
            .map(|(c, sidecar)| {
                let mut value = to_value(*c);
                if *sidecar {
                    value["restartPolicy"] = json!(SIDECAR_RESTART_POLICY);
                }
                value
            })
            .collect();
        if !init.is_empty() {
            pod.insert("initContainers".into(), Value::Array(init));
        }
        let containers: Vec<Value> = owner
            .containers
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let mounts: Vec<Value> = self
                    .parts
                    .iter()
                    .flat_map(|p| p.mounts.get(&i).into_iter().flatten())
                    .map(|m| to_value(*m))
                    .collect();
                let env: Vec<Value> = self
                    .parts
                    .iter()
                    .flat_map(|p| p.env.get(&i).into_iter().flatten())
                    .map(|e| to_value(*e))
                    .collect();
                if mounts.is_empty() && env.is_empty() {
                    return None;
                }
                let mut entry = json!({"name": c.name});
                if !mounts.is_empty() {
                    entry["volumeMounts"] = Value::Array(mounts);
                }
                if !env.is_empty() {
                    entry["env"] = Value::Array(env);
                }
                Some(entry)
            })
            .collect();
        if !containers.is_empty() {
            pod.insert("containers".into(), Value::Array(containers));
        }
        let volumes: Vec<Value> = self
            .parts
            .iter()
            .flat_map(|p| &p.volumes)
            .map(|v| to_value(*v))
            .collect();
        if !volumes.is_empty() {
            pod.insert("volumes".into(), Value::Array(volumes));
        }
        if let Some(share) = self.parts.iter().find_map(|p| p.share_process_namespace) {
            pod.insert("shareProcessNamespace".into(), json!(share));
        }
        if !pod.is_empty() {
            template.insert("spec".into(), Value::Object(pod));
        }
        if !template.is_empty() {
            patch["spec"] = json!({ "template": Value::Object(template) });
        }
        patch
    }
}

fn strings<'a>(entries: impl Iterator<Item = (&'a &'a str, &'a &'a str)>) -> Map<String, Value> {
    entries
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// The container as injected: sidecars get the restart policy that makes them native sidecars.
fn as_injected(container: &Container, sidecar: bool) -> Container {
    let mut injected = container.clone();
    if sidecar {
        injected.restart_policy = Some(SIDECAR_RESTART_POLICY.to_owned());
    }
    injected
}

/// Plans the injection of `policies` (sorted and validated, each with its revision) into the
/// pod template of Deployment `deployment`, whose owner's part is `pod`.
pub(crate) fn plan<'p>(
    deployment: &str,
    pod: &PodFacts,
    policies: &[(&'p SidecarPolicy, &'p str)],
) -> (Result<Injection<'p>, Vec<Problem>>, Vec<Warning>) {
    let mut planner = Planner {
        deployment,
        pod,
        claims: Claims::of_deployment(pod),
        injection: Injection::default(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    for (policy, revision) in policies {
        planner.add_policy(policy, revision);
    }
    let Planner {
        injection,
        problems,
        warnings,
        ..
    } = planner;
    if problems.is_empty() {
        (Ok(injection), warnings)
    } else {
        (Err(problems), warnings)
    }
}

/// Who already uses a name, path, port or key, and where.
#[derive(Clone, Copy, Debug)]
enum Holder<'a> {
    Deployment(Site<'a>),
    Policy(&'a str, Site<'a>),
}

/// A [`Holder`] with the Deployment's name, for messages.
struct Named<'a>(Holder<'a>, &'a str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Holder::Deployment(site) => write!(f, "Deployment {:?} ({site})", self.1),
            Holder::Policy(key, site) => write!(f, "{} ({site})", crate::cluster::describe(key)),
        }
    }
}

/// Claims on everything in the pod that must be unique. Keys borrow from the inputs.
#[derive(Default)]
struct Claims<'a> {
    containers: BTreeMap<&'a str, Holder<'a>>,
    volumes: BTreeMap<&'a str, Holder<'a>>,
    /// (port, protocol) of containers that run alongside the app.
    ports: BTreeMap<(i32, &'a str), Holder<'a>>,
    /// (app container index, mount path).
    mounts: BTreeMap<(usize, &'a str), Holder<'a>>,
    /// (app container index, env var name).
    env: BTreeMap<(usize, &'a str), Holder<'a>>,
    labels: BTreeMap<&'a str, (&'a str, Holder<'a>)>,
    annotations: BTreeMap<&'a str, (&'a str, Holder<'a>)>,
    share_process_namespace: Option<(bool, Holder<'a>)>,
}

const CONTAINERS: &str = "spec.template.spec.containers";
const INIT_CONTAINERS: &str = "spec.template.spec.initContainers";

impl<'a> Claims<'a> {
    fn of_deployment(pod: &'a PodFacts) -> Self {
        let mut claims = Claims::default();
        let owner = Holder::Deployment;
        for (i, c) in pod.containers.iter().enumerate() {
            let site = Site::item(CONTAINERS, i);
            claims.containers.insert(&c.name, owner(site));
            claims.claim_ports(&c.ports, site);
            for (j, path) in c.mount_paths.iter().enumerate() {
                claims
                    .mounts
                    .insert((i, path), owner(site.nested(".volumeMounts", j)));
            }
            for (j, name) in c.env.iter().enumerate() {
                claims.env.insert((i, name), owner(site.nested(".env", j)));
            }
        }
        for (i, c) in pod.init_containers.iter().enumerate() {
            let site = Site::item(INIT_CONTAINERS, i);
            claims.containers.insert(&c.name, owner(site));
            if c.sidecar {
                claims.claim_ports(&c.ports, site); // the owner's own sidecars run beside the app
            }
        }
        for (i, name) in pod.ephemeral_containers.iter().enumerate() {
            claims.containers.insert(
                name,
                owner(Site::item("spec.template.spec.ephemeralContainers", i)),
            );
        }
        for (i, name) in pod.volumes.iter().enumerate() {
            claims
                .volumes
                .insert(name, owner(Site::item("spec.template.spec.volumes", i)));
        }
        for (k, v) in &pod.labels {
            claims
                .labels
                .insert(k, (v, owner(Site::key("spec.template.metadata.labels", k))));
        }
        for (k, v) in &pod.annotations {
            claims
                .annotations
                .insert(k, (v, owner(Site::key("spec.template.metadata.annotations", k))));
        }
        claims.share_process_namespace = pod
            .share_process_namespace
            .map(|v| (v, owner(Site::at("spec.template.spec.shareProcessNamespace"))));
        claims
    }

    fn claim_ports(&mut self, ports: &'a [Port], site: Site<'a>) {
        for (j, port) in ports.iter().enumerate() {
            self.ports
                .entry((port.number, port.protocol.as_str()))
                .or_insert(Holder::Deployment(site.nested(".ports", j)));
        }
    }
}

fn port_key(port: i32, protocol: Option<&str>) -> (i32, &str) {
    (port, protocol.unwrap_or("TCP"))
}

/// `'a`: what the planner reads (the Deployment, and the policies through `'p: 'a`);
/// `'p`: the policies, which the injection borrows.
struct Planner<'a, 'p> {
    deployment: &'a str,
    pod: &'a PodFacts,
    claims: Claims<'a>,
    injection: Injection<'p>,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

impl<'a, 'p: 'a> Planner<'a, 'p> {
    fn add_policy(&mut self, policy: &'p SidecarPolicy, revision: &'p str) {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let spec = &policy.spec;
        self.injection.parts.push(Part {
            name,
            revision,
            placement: spec.placement,
            containers: Vec::new(),
            volumes: Vec::new(),
            mounts: BTreeMap::new(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            share_process_namespace: None,
        });

        // Volumes a container of this policy may mount: the policy's own and the Deployment's.
        let known_volumes = KnownVolumes {
            policy: &spec.volumes,
            deployment: &self.pod.volumes,
        };

        for (site, container) in containers(policy) {
            let is_sidecar = site.is_in(SIDECARS);
            self.claim_container(name, site, container, is_sidecar, &known_volumes);
            self.part().containers.push((container, is_sidecar));
        }

        for (i, volume) in spec.volumes.iter().enumerate() {
            let site = Site::item("spec.volumes", i).field(".name");
            if let Err(holder) = claim(
                &mut self.claims.volumes,
                volume.name.as_str(),
                Holder::Policy(name, site),
            ) {
                let message = format!(
                    "volume name {:?} is already used by {}",
                    volume.name,
                    self.named(holder)
                );
                self.conflict(name, site, message);
            }
            self.part().volumes.push(volume);
        }

        for (i, patch) in spec.app_containers.iter().enumerate() {
            let site = Site::item("spec.appContainers", i);
            for target in self.targets(name, site, &patch.container_names) {
                self.patch_container(name, site, patch, target, &known_volumes);
            }
        }

        if let Some(pod) = &spec.pod {
            for (key, value) in &pod.labels {
                if self.claim_key(PodMap::Labels, name, key, value) {
                    self.part().labels.insert(key, value);
                }
            }
            for (key, value) in &pod.annotations {
                if self.claim_key(PodMap::Annotations, name, key, value) {
                    self.part().annotations.insert(key, value);
                }
            }
            if let Some(share) = pod.share_process_namespace {
                self.claim_share_process_namespace(name, share);
            }
        }
    }

    fn claim_container(
        &mut self,
        policy: &'a str,
        site: Site<'a>,
        container: &'a Container,
        is_sidecar: bool,
        known_volumes: &KnownVolumes<'_>,
    ) {
        let name_site = site.field(".name");
        if let Err(holder) = claim(
            &mut self.claims.containers,
            container.name.as_str(),
            Holder::Policy(policy, name_site),
        ) {
            let message = format!(
                "container name {:?} is already used by {}",
                container.name,
                self.named(holder)
            );
            self.conflict(policy, name_site, message);
        }
        for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
            self.check_volume(
                policy,
                site.nested(".volumeMounts", j),
                &mount.name,
                known_volumes,
            );
        }
        if !is_sidecar {
            return; // run-to-completion init containers never run beside the app
        }
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let port_site = site.nested(".ports", j).leaf(".containerPort");
            let key = port_key(port.container_port, port.protocol.as_deref());
            if let Err(holder) = claim(&mut self.claims.ports, key, Holder::Policy(policy, port_site)) {
                let message = format!(
                    "port {}/{} is already used by {}",
                    key.0,
                    key.1,
                    self.named(holder)
                );
                self.conflict(policy, port_site, message);
            }
        }
    }

    fn patch_container(
        &mut self,
        policy: &'a str,
        site: Site<'a>,
        patch: &'p sidecar_api::AppContainersPatch,
        target: usize,
        known_volumes: &KnownVolumes<'_>,
    ) {
        let target_name = &self.pod.containers[target].name;
        for (j, mount) in patch.volume_mounts.iter().enumerate() {
            let mount_site = site.nested(".volumeMounts", j);
            self.check_volume(policy, mount_site, &mount.name, known_volumes);
            let path_site = mount_site.leaf(".mountPath");
            let key = (target, mount.mount_path.as_str());
            if let Err(holder) = claim(&mut self.claims.mounts, key, Holder::Policy(policy, path_site)) {
                let message = format!(
                    "mount path {:?} in container {target_name:?} is already used by {}",
                    mount.mount_path,
                    self.named(holder)
                );
                self.conflict(policy, path_site, message);
            }
            self.part().mounts.entry(target).or_default().push(mount);
        }
        for (j, env) in patch.env.iter().enumerate() {
            let env_site = site.nested(".env", j).leaf(".name");
            let key = (target, env.name.as_str());
            if let Err(holder) = claim(&mut self.claims.env, key, Holder::Policy(policy, env_site)) {
                let message = format!(
                    "env var {:?} in container {target_name:?} is already set by {}",
                    env.name,
                    self.named(holder)
                );
                self.conflict(policy, env_site, message);
            }
            self.part().env.entry(target).or_default().push(env);
        }
    }

    /// Indices of the app containers a patch applies to; names the Deployment lacks are skipped
    /// with a warning.
    fn targets(&mut self, policy: &str, site: Site<'a>, names: &[String]) -> Vec<usize> {
        if names.is_empty() {
            return (0..self.pod.containers.len()).collect();
        }
        let mut targets = Vec::new();
        for (j, name) in names.iter().enumerate() {
            match self.pod.containers.iter().position(|c| &c.name == name) {
                Some(index) => targets.push(index),
                None => self.warnings.push(Warning {
                    policy: policy.to_owned(),
                    field: site.nested(".containerNames", j).to_string(),
                    message: format!("the Deployment has no container {name:?}; this entry skips it"),
                }),
            }
        }
        targets
    }

    fn check_volume(&mut self, policy: &str, site: Site<'a>, volume: &str, known: &KnownVolumes<'_>) {
        if !known.contains(volume) {
            let message = format!(
                "mounts volume {volume:?}, which neither this policy nor Deployment {:?} defines",
                self.deployment
            );
            self.conflict(policy, site.leaf(".name"), message);
        }
    }

    /// Claims a pod label or annotation. The same value as an existing one is satisfied already
    /// (and not recorded, so removal leaves the owner's value alone); another value is a conflict.
    /// Returns whether the key must be injected.
    fn claim_key(&mut self, map: PodMap, policy: &'a str, key: &'p str, value: &'p str) -> bool {
        let site = Site::key(map.policy_field(), key);
        let claims = match map {
            PodMap::Labels => &mut self.claims.labels,
            PodMap::Annotations => &mut self.claims.annotations,
        };
        let message = match claims.get(key) {
            None => {
                claims.insert(key, (value, Holder::Policy(policy, site)));
                return true;
            }
            Some((existing, _)) if *existing == value => return false,
            Some((existing, holder)) => format!(
                "pod {} {key:?} is already set to {existing:?} by {}; this policy asks for {value:?}",
                map.noun(),
                Named(*holder, self.deployment)
            ),
        };
        self.conflict(policy, site, message);
        false
    }

    fn claim_share_process_namespace(&mut self, policy: &'a str, share: bool) {
        let site = Site::at("spec.pod.shareProcessNamespace");
        match self.claims.share_process_namespace {
            None => {
                self.claims.share_process_namespace = Some((share, Holder::Policy(policy, site)));
                self.part().share_process_namespace = Some(share);
            }
            Some((existing, _)) if existing == share => {}
            Some((existing, holder)) => {
                let message = format!(
                    "shareProcessNamespace is already set to {existing} by {}; this policy asks for {share}",
                    self.named(holder)
                );
                self.conflict(policy, site, message);
            }
        }
    }

    /// The part of the policy being added.
    fn part(&mut self) -> &mut Part<'p> {
        let parts = &mut self.injection.parts;
        let last = parts.len() - 1; // add_policy pushes the part before anything uses it
        &mut parts[last]
    }

    fn named(&self, holder: Holder<'a>) -> Named<'a> {
        Named(holder, self.deployment)
    }

    fn conflict(&mut self, policy: &str, site: Site<'_>, message: String) {
        self.problems.push(Problem {
            kind: ProblemKind::Conflict,
            policy: policy.to_owned(),
            field: site.to_string(),
            message,
        });
    }
}

/// The volumes a policy's containers may mount. A handful each: a scan beats building a set.
struct KnownVolumes<'v> {
    policy: &'v [Volume],
    deployment: &'v [String],
}

impl KnownVolumes<'_> {
    fn contains(&self, name: &str) -> bool {
        self.policy.iter().any(|v| v.name == name) || self.deployment.iter().any(|v| v == name)
    }
}

#[derive(Clone, Copy)]
enum PodMap {
    Labels,
    Annotations,
}

impl PodMap {
    fn noun(self) -> &'static str {
        match self {
            PodMap::Labels => "label",
            PodMap::Annotations => "annotation",
        }
    }

    fn policy_field(self) -> &'static str {
        match self {
            PodMap::Labels => "spec.pod.labels",
            PodMap::Annotations => "spec.pod.annotations",
        }
    }
}

/// Claims `key` for `holder`, or returns whoever holds it already.
fn claim<'a, K: Ord>(
    claims: &mut BTreeMap<K, Holder<'a>>,
    key: K,
    holder: Holder<'a>,
) -> Result<(), Holder<'a>> {
    match claims.entry(key) {
        Entry::Occupied(existing) => Err(*existing.get()),
        Entry::Vacant(slot) => {
            slot.insert(holder);
            Ok(())
        }
    }
}

/// Appends clones of `items`, creating the list only when there is something to add.
fn extend_list<T: Clone>(list: &mut Option<Vec<T>>, items: &[&T]) {
    if !items.is_empty() {
        let list = list.get_or_insert_default();
        list.reserve(items.len());
        list.extend(items.iter().map(|item| (*item).clone()));
    }
}

fn extend_map(map: &mut Option<BTreeMap<String, String>>, entries: &BTreeMap<&str, &str>) {
    if !entries.is_empty() {
        map.get_or_insert_default()
            .extend(entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    }
}
