//! Autoscalers that injected sidecars skew, and the warnings that say how.
//!
//! A HorizontalPodAutoscaler on a `Resource` metric divides the pods' usage by the sum of the
//! requests of their app containers and native sidecars: sidecars change both, so the scale-out
//! point moves, and a sidecar without a request leaves the HPA unable to compute a utilization
//! at all. A VerticalPodAutoscaler sizes every container it has no `containerPolicy` for,
//! injected sidecars included, which overrides what the policy asked for. The controller keeps
//! an [`AutoscalerIndex`] fed by watches; `render`, `plan` and `explain` build one from what they
//! read. Warnings never refuse a render.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

use crate::facts::{AUTOSCALED_RESOURCES, PodFacts, Requested};
use crate::problem::Warning;

/// What the warnings need of a HorizontalPodAutoscaler (autoscaling/v2) that scales a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hpa {
    pub name: String,
    /// The Deployment it scales (`spec.scaleTargetRef`).
    pub deployment: String,
    /// Its `Resource` metrics on CPU or memory. (`ContainerResource` metrics measure one named
    /// container, which injection does not change.)
    pub targets: Vec<ResourceTarget>,
}

/// One `Resource` metric of an HPA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceTarget {
    /// `cpu` or `memory`.
    pub resource: String,
    pub target: Target,
}

/// What an HPA keeps a resource's average at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A percentage of the pods' requests (`averageUtilization`).
    Utilization(i32),
    /// An amount of usage per pod (`averageValue`), as written.
    AverageValue(String),
}

impl Hpa {
    /// The facts of `hpa`, or `None` if it scales no Deployment.
    pub fn of(hpa: &HorizontalPodAutoscaler) -> Option<Self> {
        let spec = &hpa.spec;
        let target = &spec.scale_target_ref;
        if target.kind != "Deployment" || !is_apps(target.api_version.as_deref()) {
            return None;
        }
        let targets = spec
            .metrics
            .iter()
            .flatten()
            .filter_map(|metric| metric.resource.as_ref())
            .filter(|resource| AUTOSCALED_RESOURCES.contains(&resource.name.as_str()))
            .filter_map(|resource| {
                let target = match (
                    &resource.target.average_utilization,
                    &resource.target.average_value,
                ) {
                    (Some(percent), _) if resource.target.type_ == "Utilization" => {
                        Target::Utilization(*percent)
                    }
                    (_, Some(value)) if resource.target.type_ == "AverageValue" => {
                        Target::AverageValue(value.0.clone())
                    }
                    _ => return None,
                };
                Some(ResourceTarget {
                    resource: resource.name.clone(),
                    target,
                })
            })
            .collect();
        Some(Hpa {
            name: hpa.metadata.name.clone().unwrap_or_default(),
            deployment: target.name.clone(),
            targets,
        })
    }
}

/// What the warnings need of a VerticalPodAutoscaler (`autoscaling.k8s.io/v1`, a CRD, so read
/// from JSON) that sizes a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vpa {
    pub name: String,
    /// The Deployment it sizes (`spec.targetRef`).
    pub deployment: String,
    /// `spec.updatePolicy.updateMode` is `Off`: it only recommends.
    pub recommends_only: bool,
    /// The container names its `resourcePolicy.containerPolicies` name (`*` included).
    pub containers: BTreeSet<String>,
}

impl Vpa {
    /// The facts of the VPA `object`, or `None` if it sizes no Deployment.
    pub fn of(object: &Value) -> Option<Self> {
        let spec = object.get("spec")?;
        let target = spec.get("targetRef")?;
        let kind = target.get("kind").and_then(Value::as_str);
        if kind != Some("Deployment") || !is_apps(target.get("apiVersion").and_then(Value::as_str)) {
            return None;
        }
        let containers = spec
            .pointer("/resourcePolicy/containerPolicies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("containerName").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        Some(Vpa {
            name: object.pointer("/metadata/name")?.as_str()?.to_owned(),
            deployment: target.get("name")?.as_str()?.to_owned(),
            recommends_only: spec.pointer("/updatePolicy/updateMode").and_then(Value::as_str) == Some("Off"),
            containers,
        })
    }
}

/// Whether a target reference's apiVersion is the Deployment's (unset counts: the API server
/// reads a bare `kind: Deployment` as apps).
fn is_apps(api_version: Option<&str>) -> bool {
    api_version.is_none_or(|v| v == "apps/v1" || v.starts_with("apps/"))
}

/// The autoscalers of one Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Autoscalers {
    pub hpas: Vec<Hpa>,
    pub vpas: Vec<Vpa>,
}

impl Autoscalers {
    pub fn is_empty(&self) -> bool {
        self.hpas.is_empty() && self.vpas.is_empty()
    }
}

/// An autoscaler of either kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Autoscaler {
    Hpa(Hpa),
    Vpa(Vpa),
}

impl Autoscaler {
    fn deployment(&self) -> &str {
        match self {
            Autoscaler::Hpa(hpa) => &hpa.deployment,
            Autoscaler::Vpa(vpa) => &vpa.deployment,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Autoscaler::Hpa(_) => Kind::Hpa,
            Autoscaler::Vpa(_) => Kind::Vpa,
        }
    }
}

/// Which kind of autoscaler a watch delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Hpa,
    Vpa,
}

/// An autoscaler as a relist delivers it: (namespace, name, facts).
pub type Listed = (String, String, Option<Autoscaler>);

/// Every watched autoscaler that scales a Deployment, by the Deployment it scales. Fed by the
/// watches' events; each change says which Deployments' warnings may have changed.
#[derive(Clone, Debug, Default)]
pub struct AutoscalerIndex {
    /// By (kind, namespace, name).
    objects: HashMap<(Kind, String, String), Autoscaler>,
    /// (namespace, Deployment) to the autoscalers that scale it, as (kind, name).
    by_deployment: HashMap<(String, String), BTreeSet<(Kind, String)>>,
}

impl AutoscalerIndex {
    /// Records autoscaler `namespace/name` of `kind` as `autoscaler` (`None`: it is gone, or
    /// scales no Deployment). Returns the Deployments of `namespace` to look at again: the one
    /// it scaled before and the one it scales now, if anything changed.
    pub fn apply(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        autoscaler: Option<Autoscaler>,
    ) -> BTreeSet<String> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        if self.objects.get(&key) == autoscaler.as_ref() {
            return BTreeSet::new();
        }
        let mut touched = BTreeSet::new();
        if let Some(previous) = self.objects.remove(&key) {
            let target = (namespace.to_owned(), previous.deployment().to_owned());
            if let Some(set) = self.by_deployment.get_mut(&target) {
                set.remove(&(kind, name.to_owned()));
                if set.is_empty() {
                    self.by_deployment.remove(&target);
                }
            }
            touched.insert(target.1);
        }
        if let Some(autoscaler) = autoscaler {
            debug_assert_eq!(autoscaler.kind(), kind);
            let deployment = autoscaler.deployment().to_owned();
            self.by_deployment
                .entry((namespace.to_owned(), deployment.clone()))
                .or_default()
                .insert((kind, name.to_owned()));
            self.objects.insert(key, autoscaler);
            touched.insert(deployment);
        }
        touched
    }

    /// Replaces every autoscaler of `kind` with `listed` (a watch relisted), as (namespace,
    /// name, facts). Returns the Deployments to look at again, as (namespace, name).
    pub fn replace(&mut self, kind: Kind, listed: Vec<Listed>) -> BTreeSet<(String, String)> {
        let mut gone: BTreeSet<(String, String)> = self
            .objects
            .keys()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, ns, name)| (ns.clone(), name.clone()))
            .collect();
        let mut touched = BTreeSet::new();
        for (namespace, name, autoscaler) in listed {
            gone.remove(&(namespace.clone(), name.clone()));
            for deployment in self.apply(kind, &namespace, &name, autoscaler) {
                touched.insert((namespace.clone(), deployment));
            }
        }
        for (namespace, name) in gone {
            for deployment in self.apply(kind, &namespace, &name, None) {
                touched.insert((namespace.clone(), deployment));
            }
        }
        touched
    }

    /// The autoscalers of Deployment `namespace/deployment`, in name order.
    pub fn of(&self, namespace: &str, deployment: &str) -> Autoscalers {
        let mut found = Autoscalers::default();
        let Some(keys) = self
            .by_deployment
            .get(&(namespace.to_owned(), deployment.to_owned()))
        else {
            return found;
        };
        for (kind, name) in keys {
            match self.objects.get(&(*kind, namespace.to_owned(), name.clone())) {
                Some(Autoscaler::Hpa(hpa)) => found.hpas.push(hpa.clone()),
                Some(Autoscaler::Vpa(vpa)) => found.vpas.push(vpa.clone()),
                None => {}
            }
        }
        found
    }

    /// How many autoscalers scale Deployments.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// A sidecar a policy injects, as the warnings name it.
#[derive(Clone, Copy, Debug)]
pub struct InjectedSidecar<'a> {
    /// The policy's key (see `crate::cluster`).
    pub policy: &'a str,
    /// Its index in the policy's `spec.sidecars`.
    pub index: usize,
    pub container: &'a Container,
}

impl InjectedSidecar<'_> {
    fn request(&self, resource: &str) -> Option<u64> {
        let requests = self.container.resources.as_ref()?.requests.as_ref()?;
        crate::quantity::milli(&requests.get(resource)?.0)
    }

    fn name(&self) -> &str {
        &self.container.name
    }
}

/// What the autoscalers of a Deployment whose owner's pod template is `owner` make of the
/// `sidecars` injected into it: one warning per policy and autoscaler metric that the sidecars
/// skew, per sidecar without a request a utilization needs, and per sidecar a VPA would size.
pub fn warnings(
    owner: &PodFacts,
    sidecars: &[InjectedSidecar<'_>],
    autoscalers: &Autoscalers,
) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if sidecars.is_empty() {
        return warnings;
    }
    for hpa in &autoscalers.hpas {
        for metric in &hpa.targets {
            let no_request = Requested::default();
            let requested = owner.requests.get(&metric.resource).unwrap_or(&no_request);
            hpa_warnings(hpa, metric, requested, sidecars, &mut warnings);
        }
    }
    for vpa in autoscalers.vpas.iter().filter(|v| !v.recommends_only) {
        for sidecar in sidecars.iter().filter(|s| !vpa.containers.contains(s.name())) {
            let fallback = if vpa.containers.contains("*") {
                " by its \"*\" containerPolicy"
            } else {
                ""
            };
            warnings.push(Warning {
                policy: sidecar.policy.to_owned(),
                field: format!("spec.sidecars[{}].resources", sidecar.index),
                message: format!(
                    "VerticalPodAutoscaler {:?} has no containerPolicy for injected sidecar {:?}, so it sizes the sidecar too{fallback}, over the policy's resources; give it a containerPolicy for {:?} (for example mode: \"Off\")",
                    vpa.name,
                    sidecar.name(),
                    sidecar.name()
                ),
            });
        }
    }
    warnings.sort();
    warnings.dedup();
    warnings
}

fn hpa_warnings(
    hpa: &Hpa,
    metric: &ResourceTarget,
    owner: &Requested,
    sidecars: &[InjectedSidecar<'_>],
    warnings: &mut Vec<Warning>,
) {
    let resource = metric.resource.as_str();
    let all_added: u64 = sidecars.iter().filter_map(|s| s.request(resource)).sum();
    for (policy, own) in by_policy(sidecars) {
        let names = quoted(own.iter().map(InjectedSidecar::name));
        let added: u64 = own.iter().filter_map(|s| s.request(resource)).sum();
        let mut warn = |field: String, message: String| {
            warnings.push(Warning {
                policy: policy.to_owned(),
                field,
                message,
            });
        };
        match &metric.target {
            Target::Utilization(percent) => {
                if let Some(pod_level) = owner.pod_level {
                    warn(
                        "spec.sidecars".to_owned(),
                        format!(
                            "HorizontalPodAutoscaler {:?} keeps {resource} at {percent}% of the pod-level request {}; the usage of sidecars {names} now counts toward it",
                            hpa.name,
                            amount(resource, pod_level)
                        ),
                    );
                    continue;
                }
                let without: Vec<&InjectedSidecar<'_>> =
                    own.iter().filter(|s| s.request(resource).is_none()).collect();
                for sidecar in &without {
                    warn(
                        format!("spec.sidecars[{}].resources.requests.{resource}", sidecar.index),
                        format!(
                            "sidecar {:?} requests no {resource}, so HorizontalPodAutoscaler {:?} cannot compute the pods' {resource} utilization and stops scaling on it; set a {resource} request",
                            sidecar.name(),
                            hpa.name
                        ),
                    );
                }
                // Owner containers without a request break the HPA already; nothing of ours.
                if !without.is_empty() || owner.without.is_some() || added == 0 {
                    continue;
                }
                let total = owner.total.saturating_add(all_added);
                let share = if added == all_added {
                    String::new()
                } else {
                    format!(" (all injected sidecars: {})", amount(resource, all_added))
                };
                warn(
                    "spec.sidecars".to_owned(),
                    format!(
                        "sidecars {names} add {}{share} to the pod's {} {resource} requests: HorizontalPodAutoscaler {:?} keeps {resource} at {percent}% of them, so it now scales out at {} of usage per pod instead of {}",
                        amount(resource, added),
                        amount(resource, total),
                        hpa.name,
                        amount(resource, percent_of(total, *percent)),
                        amount(resource, percent_of(owner.total, *percent)),
                    ),
                );
            }
            Target::AverageValue(value) => {
                let requests = match added {
                    0 => String::new(),
                    n => format!(" (they request {})", amount(resource, n)),
                };
                warn(
                    "spec.sidecars".to_owned(),
                    format!(
                        "HorizontalPodAutoscaler {:?} keeps the pods' average {resource} usage at {value}, which now includes the usage of sidecars {names}{requests}",
                        hpa.name
                    ),
                );
            }
        }
    }
}

/// The sidecars grouped by policy, in injection order.
fn by_policy<'a>(sidecars: &[InjectedSidecar<'a>]) -> Vec<(&'a str, Vec<InjectedSidecar<'a>>)> {
    let mut groups: Vec<(&str, Vec<InjectedSidecar<'_>>)> = Vec::new();
    for sidecar in sidecars {
        match groups.last_mut() {
            Some((policy, own)) if *policy == sidecar.policy => own.push(*sidecar),
            _ => groups.push((sidecar.policy, vec![*sidecar])),
        }
    }
    groups
}

fn quoted<'n>(names: impl Iterator<Item = &'n str>) -> String {
    names.map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

fn percent_of(milli: u64, percent: i32) -> u64 {
    let percent = u128::from(percent.max(0).unsigned_abs());
    u64::try_from(u128::from(milli) * percent / 100).unwrap_or(u64::MAX)
}

/// An amount in thousandths of its unit, written as a person reads it: CPU in millicores or
/// cores, memory in binary units.
fn amount(resource: &str, milli: u64) -> String {
    if resource == "cpu" {
        return match milli % 1000 {
            0 => (milli / 1000).to_string(),
            _ => format!("{milli}m"),
        };
    }
    let bytes = milli.div_ceil(1000);
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    if bytes >= 1 << 20 {
        // Not a whole number of Mi (a threshold): one decimal is what a person compares.
        return format!("{:.1}Mi", bytes as f64 / f64::from(1u32 << 20));
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::amount;

    #[test]
    fn amounts_read_as_a_person_writes_them() {
        assert_eq!(amount("cpu", 150), "150m");
        assert_eq!(amount("cpu", 2000), "2");
        assert_eq!(amount("memory", 128 * (1 << 20) * 1000), "128Mi");
        assert_eq!(amount("memory", 3 * (1 << 30) * 1000), "3Gi");
        assert_eq!(amount("memory", 1536 * 1000), "1536");
        assert_eq!(amount("memory", 419_430_400 * 8 / 10 * 1000), "320Mi");
        assert_eq!(amount("memory", 100_000_000_000), "95.4Mi");
    }
}
