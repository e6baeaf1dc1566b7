//! What the matching policies add to one Deployment's pod template, checked against what the
//! Deployment already has and against each other.
//!
//! Every name, port, mount path, env var, label and pod setting is "claimed" by the Deployment's
//! owner or by the first policy that adds it; a second claim is a conflict that names both
//! parties. Nothing is overwritten.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec, Volume, VolumeMount};
use sidecar_api::{Placement, SidecarPolicy};

use crate::problem::{Problem, ProblemKind, Warning};
use crate::record::InjectionRecord;
use crate::site::Site;
use crate::validate::{SIDECARS, containers};

/// Native sidecars are init containers with this restart policy (KEP-753).
const SIDECAR_RESTART_POLICY: &str = "Always";

/// Everything the matching policies add, ready to be applied to the owner's pod template.
///
/// It borrows from the policies: Kubernetes containers and volumes are kilobytes each, so they are
/// cloned once, straight into the rendered pod template.
#[derive(Debug, Default)]
pub(crate) struct Injection<'p> {
    policies: Vec<&'p str>,
    /// Injected init containers and sidecars placed before the Deployment's own init containers,
    /// with whether each is a sidecar.
    before: Vec<(&'p Container, bool)>,
    /// Those placed after them.
    after: Vec<(&'p Container, bool)>,
    volumes: Vec<&'p Volume>,
    /// Additions to app containers, by index in `spec.template.spec.containers`.
    mounts: BTreeMap<usize, Vec<&'p VolumeMount>>,
    env: BTreeMap<usize, Vec<&'p EnvVar>>,
    labels: BTreeMap<&'p str, &'p str>,
    annotations: BTreeMap<&'p str, &'p str>,
    share_process_namespace: Option<bool>,
}

impl Injection<'_> {
    /// Adds the injection to `template` (the owner's template, with nothing injected, as given to
    /// [`plan`]) and returns the record of what was added.
    pub(crate) fn apply(self, template: &mut PodTemplateSpec) -> InjectionRecord {
        let mut record = InjectionRecord {
            policies: self.policies.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        };
        if !self.labels.is_empty() || !self.annotations.is_empty() {
            let metadata = template.metadata.get_or_insert_default();
            record.pod_labels = self.labels.keys().map(|k| (*k).to_owned()).collect();
            record.pod_annotations = self.annotations.keys().map(|k| (*k).to_owned()).collect();
            extend_map(&mut metadata.labels, &self.labels);
            extend_map(&mut metadata.annotations, &self.annotations);
        }
        let pod = template.spec.get_or_insert_default();
        if let Some(share) = self.share_process_namespace {
            pod.share_process_namespace = Some(share);
            record.share_process_namespace = true;
        }
        let injected = self.before.iter().chain(&self.after);
        record.init_containers = injected.map(|(c, _)| c.name.clone()).collect();
        if !self.before.is_empty() || !self.after.is_empty() {
            let own = pod.init_containers.take().unwrap_or_default();
            let mut all = Vec::with_capacity(self.before.len() + own.len() + self.after.len());
            all.extend(self.before.iter().map(|(c, sidecar)| as_injected(c, *sidecar)));
            all.extend(own);
            all.extend(self.after.iter().map(|(c, sidecar)| as_injected(c, *sidecar)));
            pod.init_containers = Some(all);
        }
        record.volumes = self.volumes.iter().map(|v| v.name.clone()).collect();
        extend_list(&mut pod.volumes, &self.volumes);
        for (i, container) in pod.containers.iter_mut().enumerate() {
            if let Some(mounts) = self.mounts.get(&i) {
                let paths = mounts.iter().map(|m| m.mount_path.clone());
                record.mounts.insert(container.name.clone(), paths.collect());
                extend_list(&mut container.volume_mounts, mounts);
            }
            if let Some(env) = self.env.get(&i) {
                record.env.insert(
                    container.name.clone(),
                    env.iter().map(|e| e.name.clone()).collect(),
                );
                extend_list(&mut container.env, env);
            }
        }
        record
    }
}

/// The container as injected: sidecars get the restart policy that makes them native sidecars.
fn as_injected(container: &Container, sidecar: bool) -> Container {
    let mut injected = container.clone();
    if sidecar {
        injected.restart_policy = Some(SIDECAR_RESTART_POLICY.to_owned());
    }
    injected
}

/// Plans the injection of `policies` (sorted and validated) into `template`, the owner's pod
/// template of Deployment `deployment`.
pub(crate) fn plan<'p>(
    deployment: &str,
    template: &PodTemplateSpec,
    policies: &[&'p SidecarPolicy],
) -> (Result<Injection<'p>, Vec<Problem>>, Vec<Warning>) {
    let no_pod = PodSpec::default();
    let pod = template.spec.as_ref().unwrap_or(&no_pod);
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
            Holder::Policy(name, site) => write!(f, "SidecarPolicy {name:?} ({site})"),
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
    fn of_deployment(template: &'a PodTemplateSpec, pod: &'a PodSpec) -> Self {
        let mut claims = Claims::default();
        let owner = Holder::Deployment;
        for (i, c) in pod.containers.iter().enumerate() {
            let site = Site::item(CONTAINERS, i);
            claims.containers.insert(&c.name, owner(site));
            claims.claim_ports(c, site);
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                claims
                    .mounts
                    .insert((i, &m.mount_path), owner(site.nested(".volumeMounts", j)));
            }
            for (j, e) in c.env.iter().flatten().enumerate() {
                claims.env.insert((i, &e.name), owner(site.nested(".env", j)));
            }
        }
        for (i, c) in pod.init_containers.iter().flatten().enumerate() {
            let site = Site::item(INIT_CONTAINERS, i);
            claims.containers.insert(&c.name, owner(site));
            if c.restart_policy.as_deref() == Some(SIDECAR_RESTART_POLICY) {
                claims.claim_ports(c, site); // the owner's own sidecars run beside the app
            }
        }
        for (i, c) in pod.ephemeral_containers.iter().flatten().enumerate() {
            claims.containers.insert(
                &c.name,
                owner(Site::item("spec.template.spec.ephemeralContainers", i)),
            );
        }
        for (i, v) in pod.volumes.iter().flatten().enumerate() {
            claims
                .volumes
                .insert(&v.name, owner(Site::item("spec.template.spec.volumes", i)));
        }
        if let Some(metadata) = &template.metadata {
            for (k, v) in metadata.labels.iter().flatten() {
                claims
                    .labels
                    .insert(k, (v, owner(Site::key("spec.template.metadata.labels", k))));
            }
            for (k, v) in metadata.annotations.iter().flatten() {
                claims
                    .annotations
                    .insert(k, (v, owner(Site::key("spec.template.metadata.annotations", k))));
            }
        }
        claims.share_process_namespace = pod
            .share_process_namespace
            .map(|v| (v, owner(Site::at("spec.template.spec.shareProcessNamespace"))));
        claims
    }

    fn claim_ports(&mut self, container: &'a Container, site: Site<'a>) {
        for (j, port) in container.ports.iter().flatten().enumerate() {
            self.ports
                .entry(port_key(port.container_port, port.protocol.as_deref()))
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
    pod: &'a PodSpec,
    claims: Claims<'a>,
    injection: Injection<'p>,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

impl<'a, 'p: 'a> Planner<'a, 'p> {
    fn add_policy(&mut self, policy: &'p SidecarPolicy) {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let spec = &policy.spec;
        self.injection.policies.push(name);

        // Volumes a container of this policy may mount: the policy's own and the Deployment's.
        let known_volumes = KnownVolumes {
            policy: &spec.volumes,
            deployment: self.pod.volumes.as_deref(),
        };

        for (site, container) in containers(policy) {
            let is_sidecar = site.is_in(SIDECARS);
            self.claim_container(name, site, container, is_sidecar, &known_volumes);
            match spec.placement {
                Placement::BeforeAppInitContainers => self.injection.before.push((container, is_sidecar)),
                Placement::AfterAppInitContainers => self.injection.after.push((container, is_sidecar)),
            }
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
            self.injection.volumes.push(volume);
        }

        for (i, patch) in spec.app_containers.iter().enumerate() {
            let site = Site::item("spec.appContainers", i);
            for target in self.targets(name, site, &patch.container_names) {
                self.patch_container(name, site, patch, target, &known_volumes);
            }
        }

        if let Some(pod) = &spec.pod {
            for (key, value) in &pod.labels {
                if self.claim_key(Map::Labels, name, key, value) {
                    self.injection.labels.insert(key, value);
                }
            }
            for (key, value) in &pod.annotations {
                if self.claim_key(Map::Annotations, name, key, value) {
                    self.injection.annotations.insert(key, value);
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
            self.injection.mounts.entry(target).or_default().push(mount);
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
            self.injection.env.entry(target).or_default().push(env);
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
                    message: format!(
                        "Deployment {:?} has no container {name:?}; this entry skips it",
                        self.deployment
                    ),
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
    fn claim_key(&mut self, map: Map, policy: &'a str, key: &'p str, value: &'p str) -> bool {
        let site = Site::key(map.policy_field(), key);
        let claims = match map {
            Map::Labels => &mut self.claims.labels,
            Map::Annotations => &mut self.claims.annotations,
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
                self.injection.share_process_namespace = Some(share);
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
    deployment: Option<&'v [Volume]>,
}

impl KnownVolumes<'_> {
    fn contains(&self, name: &str) -> bool {
        self.policy
            .iter()
            .chain(self.deployment.unwrap_or_default())
            .any(|v| v.name == name)
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

    fn policy_field(self) -> &'static str {
        match self {
            Map::Labels => "spec.pod.labels",
            Map::Annotations => "spec.pod.annotations",
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
