//! What the matching policies add to one Deployment's pod template, checked against what the
//! Deployment already has and against each other.
//!
//! Every name, port, mount path, env var, label and pod setting is "claimed" by the Deployment's
//! owner or by the first policy that adds it; a second claim is a conflict that names both
//! parties. Nothing is overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec, Volume, VolumeMount};
use sidecar_api::{Placement, SidecarPolicy};

use crate::problem::{Problem, ProblemKind, Warning};
use crate::record::InjectionRecord;

/// Native sidecars are init containers with this restart policy (KEP-753).
const SIDECAR_RESTART_POLICY: &str = "Always";

/// Everything the matching policies add, ready to be applied to the owner's pod template.
#[derive(Debug, Default)]
pub(crate) struct Injection {
    policies: Vec<String>,
    /// Injected init containers and sidecars placed before the Deployment's own init containers.
    before: Vec<Container>,
    /// Those placed after them.
    after: Vec<Container>,
    volumes: Vec<Volume>,
    mounts: BTreeMap<String, Vec<VolumeMount>>,
    env: BTreeMap<String, Vec<EnvVar>>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    share_process_namespace: Option<bool>,
}

impl Injection {
    /// Adds the injection to `template` (the owner's template, with nothing injected) and returns
    /// the record of what was added.
    pub(crate) fn apply(self, template: &mut PodTemplateSpec) -> InjectionRecord {
        let mut record = InjectionRecord {
            policies: self.policies,
            ..Default::default()
        };
        if !self.labels.is_empty() || !self.annotations.is_empty() {
            let metadata = template.metadata.get_or_insert_default();
            record.pod_labels = self.labels.keys().cloned().collect();
            record.pod_annotations = self.annotations.keys().cloned().collect();
            extend_map(&mut metadata.labels, self.labels);
            extend_map(&mut metadata.annotations, self.annotations);
        }
        let pod = template.spec.get_or_insert_default();
        if let Some(share) = self.share_process_namespace {
            pod.share_process_namespace = Some(share);
            record.share_process_namespace = true;
        }
        record.init_containers = self
            .before
            .iter()
            .chain(&self.after)
            .map(|c| c.name.clone())
            .collect();
        if !self.before.is_empty() || !self.after.is_empty() {
            let own = pod.init_containers.take().unwrap_or_default();
            pod.init_containers = Some(self.before.into_iter().chain(own).chain(self.after).collect());
        }
        record.volumes = self.volumes.iter().map(|v| v.name.clone()).collect();
        extend_list(&mut pod.volumes, self.volumes);
        for container in &mut pod.containers {
            if let Some(mounts) = self.mounts.get(&container.name) {
                record.mounts.insert(
                    container.name.clone(),
                    mounts.iter().map(|m| m.mount_path.clone()).collect(),
                );
                extend_list(&mut container.volume_mounts, mounts.iter().cloned());
            }
            if let Some(env) = self.env.get(&container.name) {
                record.env.insert(
                    container.name.clone(),
                    env.iter().map(|e| e.name.clone()).collect(),
                );
                extend_list(&mut container.env, env.iter().cloned());
            }
        }
        record
    }
}

/// Plans the injection of `policies` (already sorted and validated) into `template`, the owner's
/// pod template of Deployment `deployment`.
pub(crate) fn plan(
    deployment: &str,
    template: &PodTemplateSpec,
    policies: &[&SidecarPolicy],
) -> (Result<Injection, Vec<Problem>>, Vec<Warning>) {
    let empty = PodSpec::default();
    let pod = template.spec.as_ref().unwrap_or(&empty);
    let mut planner = Planner {
        deployment,
        pod,
        claims: Claims::of_deployment(template, pod),
        injection: Injection::default(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    for policy in policies {
        planner.add_policy(policy);
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

/// Who already uses a name, path, port or key.
#[derive(Clone, Debug)]
enum Holder {
    /// The Deployment's owner, at this path of the Deployment.
    Deployment(String),
    /// A policy, at this path of the policy.
    Policy { name: String, field: String },
}

/// `Holder` with the Deployment's name, for messages.
struct Named<'a>(&'a Holder, &'a str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Holder::Deployment(path) => write!(f, "Deployment {:?} ({path})", self.1),
            Holder::Policy { name, field } => write!(f, "SidecarPolicy {name:?} ({field})"),
        }
    }
}

/// Claims on everything in the pod that must be unique.
#[derive(Default)]
struct Claims {
    containers: BTreeMap<String, Holder>,
    volumes: BTreeMap<String, Holder>,
    /// (port, protocol) of containers that run alongside the app.
    ports: BTreeMap<(i32, String), Holder>,
    /// (container, mount path).
    mounts: BTreeMap<(String, String), Holder>,
    /// (container, env var name).
    env: BTreeMap<(String, String), Holder>,
    labels: BTreeMap<String, (String, Holder)>,
    annotations: BTreeMap<String, (String, Holder)>,
    share_process_namespace: Option<(bool, Holder)>,
}

impl Claims {
    fn of_deployment(template: &PodTemplateSpec, pod: &PodSpec) -> Self {
        let mut claims = Claims::default();
        let at = |path: String| Holder::Deployment(path);
        let lists = [
            ("containers", &pod.containers[..]),
            (
                "initContainers",
                pod.init_containers.as_deref().unwrap_or_default(),
            ),
        ];
        for (list, containers) in lists {
            for (i, c) in containers.iter().enumerate() {
                let path = format!("spec.template.spec.{list}[{i}]");
                claims.containers.insert(c.name.clone(), at(path.clone()));
                let runs_alongside =
                    list == "containers" || c.restart_policy.as_deref() == Some(SIDECAR_RESTART_POLICY);
                if runs_alongside {
                    for (j, port) in c.ports.iter().flatten().enumerate() {
                        claims
                            .ports
                            .entry(port_key(port.container_port, port.protocol.as_deref()))
                            .or_insert_with(|| at(format!("{path}.ports[{j}]")));
                    }
                }
                if list == "containers" {
                    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                        let key = (c.name.clone(), m.mount_path.clone());
                        claims.mounts.insert(key, at(format!("{path}.volumeMounts[{j}]")));
                    }
                    for (j, e) in c.env.iter().flatten().enumerate() {
                        claims
                            .env
                            .insert((c.name.clone(), e.name.clone()), at(format!("{path}.env[{j}]")));
                    }
                }
            }
        }
        for (i, c) in pod.ephemeral_containers.iter().flatten().enumerate() {
            claims.containers.insert(
                c.name.clone(),
                at(format!("spec.template.spec.ephemeralContainers[{i}]")),
            );
        }
        for (i, v) in pod.volumes.iter().flatten().enumerate() {
            claims
                .volumes
                .insert(v.name.clone(), at(format!("spec.template.spec.volumes[{i}]")));
        }
        if let Some(metadata) = &template.metadata {
            for (k, v) in metadata.labels.iter().flatten() {
                let holder = at(format!("spec.template.metadata.labels[{k:?}]"));
                claims.labels.insert(k.clone(), (v.clone(), holder));
            }
            for (k, v) in metadata.annotations.iter().flatten() {
                let holder = at(format!("spec.template.metadata.annotations[{k:?}]"));
                claims.annotations.insert(k.clone(), (v.clone(), holder));
            }
        }
        claims.share_process_namespace = pod
            .share_process_namespace
            .map(|v| (v, at("spec.template.spec.shareProcessNamespace".to_owned())));
        claims
    }
}

fn port_key(port: i32, protocol: Option<&str>) -> (i32, String) {
    (port, protocol.unwrap_or("TCP").to_owned())
}

struct Planner<'a> {
    deployment: &'a str,
    pod: &'a PodSpec,
    claims: Claims,
    injection: Injection,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

impl Planner<'_> {
    fn add_policy(&mut self, policy: &SidecarPolicy) {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = &policy.spec;
        self.injection.policies.push(name.clone());

        // Volumes a container of this policy may mount: the policy's own and the Deployment's.
        let known_volumes: BTreeSet<&str> = spec
            .volumes
            .iter()
            .chain(self.pod.volumes.iter().flatten())
            .map(|v| v.name.as_str())
            .collect();

        for (path, container) in crate::validate::containers(policy) {
            let is_sidecar = path.starts_with("spec.sidecars");
            self.claim_container(&name, &path, container, is_sidecar, &known_volumes);
            let mut injected = container.clone();
            if is_sidecar {
                injected.restart_policy = Some(SIDECAR_RESTART_POLICY.to_owned());
            }
            match spec.placement {
                Placement::BeforeAppInitContainers => self.injection.before.push(injected),
                Placement::AfterAppInitContainers => self.injection.after.push(injected),
            }
        }

        for (i, volume) in spec.volumes.iter().enumerate() {
            let field = format!("spec.volumes[{i}].name");
            if let Err(holder) = claim(&mut self.claims.volumes, &volume.name, holder(&name, &field)) {
                self.conflict(
                    &name,
                    field,
                    format!(
                        "volume name {:?} is already used by {}",
                        volume.name,
                        self.named(&holder)
                    ),
                );
            }
            self.injection.volumes.push(volume.clone());
        }

        for (i, patch) in spec.app_containers.iter().enumerate() {
            let path = format!("spec.appContainers[{i}]");
            for target in self.targets(&name, &path, &patch.container_names) {
                for (j, mount) in patch.volume_mounts.iter().enumerate() {
                    let field = format!("{path}.volumeMounts[{j}]");
                    self.check_volume(&name, &field, &mount.name, &known_volumes);
                    let key = (target.clone(), mount.mount_path.clone());
                    if let Err(holder) = claim(&mut self.claims.mounts, &key, holder(&name, &field)) {
                        self.conflict(
                            &name,
                            format!("{field}.mountPath"),
                            format!(
                                "mount path {:?} in container {target:?} is already used by {}",
                                mount.mount_path,
                                self.named(&holder)
                            ),
                        );
                    }
                    self.injection
                        .mounts
                        .entry(target.clone())
                        .or_default()
                        .push(mount.clone());
                }
                for (j, env) in patch.env.iter().enumerate() {
                    let field = format!("{path}.env[{j}]");
                    let key = (target.clone(), env.name.clone());
                    if let Err(holder) = claim(&mut self.claims.env, &key, holder(&name, &field)) {
                        self.conflict(
                            &name,
                            format!("{field}.name"),
                            format!(
                                "env var {:?} in container {target:?} is already set by {}",
                                env.name,
                                self.named(&holder)
                            ),
                        );
                    }
                    self.injection
                        .env
                        .entry(target.clone())
                        .or_default()
                        .push(env.clone());
                }
            }
        }

        if let Some(pod) = &spec.pod {
            for (key, value) in &pod.labels {
                let field = format!("spec.pod.labels[{key:?}]");
                if self.claim_key(Map::Labels, &name, &field, key, value) {
                    self.injection.labels.insert(key.clone(), value.clone());
                }
            }
            for (key, value) in &pod.annotations {
                let field = format!("spec.pod.annotations[{key:?}]");
                if self.claim_key(Map::Annotations, &name, &field, key, value) {
                    self.injection.annotations.insert(key.clone(), value.clone());
                }
            }
            if let Some(share) = pod.share_process_namespace {
                self.claim_share_process_namespace(&name, share);
            }
        }
    }

    fn claim_container(
        &mut self,
        policy: &str,
        path: &str,
        container: &Container,
        is_sidecar: bool,
        known_volumes: &BTreeSet<&str>,
    ) {
        let field = format!("{path}.name");
        if let Err(holder) = claim(
            &mut self.claims.containers,
            &container.name,
            holder(policy, &field),
        ) {
            self.conflict(
                policy,
                field,
                format!(
                    "container name {:?} is already used by {}",
                    container.name,
                    self.named(&holder)
                ),
            );
        }
        for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
            self.check_volume(
                policy,
                &format!("{path}.volumeMounts[{j}]"),
                &mount.name,
                known_volumes,
            );
        }
        if !is_sidecar {
            return; // run-to-completion init containers never run beside the app
        }
        for (j, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("{path}.ports[{j}]");
            let key = port_key(port.container_port, port.protocol.as_deref());
            if let Err(holder) = claim(&mut self.claims.ports, &key, holder(policy, &field)) {
                self.conflict(
                    policy,
                    format!("{field}.containerPort"),
                    format!(
                        "port {}/{} is already used by {}",
                        key.0,
                        key.1,
                        self.named(&holder)
                    ),
                );
            }
        }
    }

    /// The app containers a patch applies to; names the Deployment lacks are skipped with a warning.
    fn targets(&mut self, policy: &str, path: &str, names: &[String]) -> Vec<String> {
        let own: Vec<&str> = self.pod.containers.iter().map(|c| c.name.as_str()).collect();
        if names.is_empty() {
            return own.into_iter().map(str::to_owned).collect();
        }
        let mut targets = Vec::new();
        for (j, name) in names.iter().enumerate() {
            if own.contains(&name.as_str()) {
                targets.push(name.clone());
            } else {
                self.warnings.push(Warning {
                    policy: policy.to_owned(),
                    field: format!("{path}.containerNames[{j}]"),
                    message: format!(
                        "Deployment {:?} has no container {name:?}; this entry skips it",
                        self.deployment
                    ),
                });
            }
        }
        targets
    }

    fn check_volume(&mut self, policy: &str, field: &str, volume: &str, known: &BTreeSet<&str>) {
        if !known.contains(volume) {
            self.conflict(
                policy,
                format!("{field}.name"),
                format!(
                    "mounts volume {volume:?}, which neither this policy nor Deployment {:?} defines",
                    self.deployment
                ),
            );
        }
    }

    /// Claims a pod label or annotation. The same value as an existing one is satisfied already
    /// (and not recorded, so removal leaves the owner's value alone); another value is a conflict.
    /// Returns whether the key must be injected.
    fn claim_key(&mut self, map: Map, policy: &str, field: &str, key: &str, value: &str) -> bool {
        let claims = match map {
            Map::Labels => &mut self.claims.labels,
            Map::Annotations => &mut self.claims.annotations,
        };
        let message = match claims.get(key) {
            None => {
                claims.insert(key.to_owned(), (value.to_owned(), holder(policy, field)));
                return true;
            }
            Some((existing, _)) if existing == value => return false,
            Some((existing, holder)) => format!(
                "pod {} {key:?} is already set to {existing:?} by {}; this policy asks for {value:?}",
                map.noun(),
                Named(holder, self.deployment)
            ),
        };
        self.conflict(policy, field.to_owned(), message);
        false
    }

    fn claim_share_process_namespace(&mut self, policy: &str, share: bool) {
        let field = "spec.pod.shareProcessNamespace";
        match &self.claims.share_process_namespace {
            None => {
                self.claims.share_process_namespace = Some((share, holder(policy, field)));
                self.injection.share_process_namespace = Some(share);
            }
            Some((existing, _)) if *existing == share => {}
            Some((existing, holder)) => {
                let message = format!(
                    "shareProcessNamespace is already set to {existing} by {}; this policy asks for {share}",
                    self.named(holder)
                );
                self.conflict(policy, field.to_owned(), message);
            }
        }
    }

    fn named<'h>(&'h self, holder: &'h Holder) -> Named<'h> {
        Named(holder, self.deployment)
    }

    fn conflict(&mut self, policy: &str, field: String, message: String) {
        self.problems.push(Problem {
            kind: ProblemKind::Conflict,
            policy: policy.to_owned(),
            field,
            message,
        });
    }
}

#[derive(Clone, Copy)]
enum Map {
    Labels,
    Annotations,
}

impl Map {
    fn noun(self) -> &'static str {
        match self {
            Map::Labels => "label",
            Map::Annotations => "annotation",
        }
    }
}

fn holder(policy: &str, field: &str) -> Holder {
    Holder::Policy {
        name: policy.to_owned(),
        field: field.to_owned(),
    }
}

/// Claims `key` for `holder`, or returns whoever holds it already.
fn claim<K: Ord + Clone>(claims: &mut BTreeMap<K, Holder>, key: &K, holder: Holder) -> Result<(), Holder> {
    match claims.get(key) {
        Some(existing) => Err(existing.clone()),
        None => {
            claims.insert(key.clone(), holder);
            Ok(())
        }
    }
}

fn extend_list<T>(list: &mut Option<Vec<T>>, items: impl IntoIterator<Item = T>) {
    let mut items = items.into_iter().peekable();
    if items.peek().is_some() {
        list.get_or_insert_default().extend(items);
    }
}

fn extend_map(map: &mut Option<BTreeMap<String, String>>, entries: BTreeMap<String, String>) {
    if !entries.is_empty() {
        map.get_or_insert_default().extend(entries);
    }
}
