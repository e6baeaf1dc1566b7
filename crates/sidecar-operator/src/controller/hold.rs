//! Releasing a Deployment held at admission (see `deploy/components/admission-hold`): the API
//! server created it paused and annotated `sidecar.dev/held-for`, so that no ReplicaSet exists
//! until the operator has rendered it. Whatever the render's outcome, the hold ends here.
//!
//! The release is a JSON Patch that removes `spec.paused` and the annotation, guarded by a `test`
//! of the generation the operator last wrote or read: a spec change made in between (the owner
//! replaced the template) fails the guard, and the next reconcile renders that change first. Not
//! the resourceVersion: kube-controller-manager writes the status of the paused Deployment right
//! after the operator's apply, which changes no generation. A removal leaves no field owned: a
//! server-side apply would keep the operator owner of `spec.paused`, and a person's later
//! `kubectl rollout pause` or a GitOps tool's apply of `paused` would then conflict with it. A
//! Deployment its owner created paused is never held (the admission policy skips it), so removing
//! the field is what the owner asked.

use k8s_openapi::api::admissionregistration::v1::MutatingAdmissionPolicyBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use serde_json::{Value, json};
use sidecar_api::HELD_FOR_ANNOTATION;
use tracing::{info, warn};

use super::context::Context;
use super::error::Error;
use super::events::{EventType, Report};
use super::view::DeploymentView;

/// Why a held Deployment is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Its template carries what its policies ask for.
    Rendered,
    /// No SidecarPolicy selects it any more (deleted or changed while it was held).
    NothingSelects,
    /// Released as its owner wrote it, without sidecars: `reason` is the Warning Event's reason,
    /// `why` says what went wrong.
    WithoutSidecars { reason: &'static str, why: String },
}

/// The JSON Patch that releases a held Deployment if its spec is still at `generation`: the
/// annotation goes, and `spec.paused` if it is set.
pub fn release_patch(generation: i64, paused: bool) -> Value {
    let annotation = HELD_FOR_ANNOTATION.replace('~', "~0").replace('/', "~1");
    let mut operations = vec![
        json!({"op": "test", "path": "/metadata/generation", "value": generation}),
        json!({"op": "remove", "path": format!("/metadata/annotations/{annotation}")}),
    ];
    if paused {
        operations.push(json!({"op": "remove", "path": "/spec/paused"}));
    }
    Value::Array(operations)
}

/// Releases `view` (held at admission), whose spec is at `generation` (the cached one, or the
/// one the operator's own write returned), and tells the user why when it goes out without its
/// sidecars.
pub async fn release(
    ctx: &Context,
    view: &DeploymentView,
    generation: i64,
    why: Release,
) -> Result<(), Error> {
    let (namespace, name) = (view.namespace(), view.name());
    let held_for = view
        .held_for()
        .unwrap_or_default()
        .iter()
        .map(|key| sidecar_core::cluster::describe(key))
        .collect::<Vec<_>>()
        .join(", ");
    let api: Api<DeploymentView> = Api::namespaced(ctx.client.clone(), namespace);
    let written = match serde_json::from_value(release_patch(generation, view.paused)) {
        Ok(patch) => {
            api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
        }
        Err(e) => Err(kube::Error::SerdeError(e)),
    };
    // A failed guard (422) means the Deployment changed since: the next reconcile sees why.
    written.map_err(|source| Error::WriteDeployment {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    ctx.metrics.wrote("release");
    let key = ObjectRef::from_obj(view);
    let held = ctx.hold_ended(&key).unwrap_or_default();
    ctx.metrics.hold_released(held);
    let reference = view.object_ref(&());
    match why {
        Release::Rendered => info!(%held_for, ?held, "released from the admission hold"),
        Release::NothingSelects => {
            info!(%held_for, "released from the admission hold: no policy selects it any more");
            let note = format!(
                "released from the admission hold (it was held for {held_for}, which no longer selects it)"
            );
            let report = Report::new(reference, EventType::Normal, "HoldReleased", "Release", note);
            ctx.events.publish(report).await;
        }
        Release::WithoutSidecars { reason, why } => {
            warn!(%held_for, reason, "released from the admission hold without sidecars: {why}");
            let note = format!("released from the admission hold without the sidecars of {held_for}: {why}");
            let report = Report::new(reference, EventType::Warning, reason, "Release", note);
            ctx.events.publish(report).await;
        }
    }
    Ok(())
}

/// The name of the install's MutatingAdmissionPolicyBinding (and of its policy).
pub const BINDING: &str = "sidecar-operator-hold";

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether new Deployments are held at admission: the API server serves MutatingAdmissionPolicy
/// v1 and the install's binding exists. Says so in the log, and warns when the binding could
/// hold Deployments in a namespace this operator does not watch (`watched`; empty: all), where
/// nobody would release them.
pub async fn check_active(client: &Client, watched: &[String]) -> bool {
    let served = match client
        .list_api_group_resources("admissionregistration.k8s.io/v1")
        .await
    {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == "mutatingadmissionpolicies"),
        Err(e) => {
            warn!("could not discover admissionregistration.k8s.io/v1 ({e}); assuming no admission hold");
            false
        }
    };
    if !served {
        info!(
            "MutatingAdmissionPolicy v1 is not served (Kubernetes < 1.36, or disabled): new Deployments are not held; \
             each starts without its sidecars and rolls again once they are injected"
        );
        return false;
    }
    let bindings: Api<MutatingAdmissionPolicyBinding> = Api::all(client.clone());
    let binding = match bindings.get_opt(BINDING).await {
        Ok(Some(binding)) => binding,
        Ok(None) => {
            info!("MutatingAdmissionPolicyBinding {BINDING} is not installed: new Deployments are not held");
            return false;
        }
        // The admission-hold component grants this read; an install without it gets a 403.
        Err(kube::Error::Api(status)) if status.code == 403 => {
            info!(
                "admission hold not active: the admission-hold install component (which lets the operator read \
                 MutatingAdmissionPolicyBinding {BINDING}) is not installed"
            );
            return false;
        }
        Err(e) => {
            warn!(
                "could not read MutatingAdmissionPolicyBinding {BINDING} ({e}); assuming no admission hold"
            );
            return false;
        }
    };
    let selector = binding
        .spec
        .as_ref()
        .and_then(|spec| spec.match_resources.as_ref())
        .and_then(|m| m.namespace_selector.as_ref());
    match unwatched_hold(selector, watched) {
        Some(problem) => warn!("MutatingAdmissionPolicyBinding {BINDING} {problem}"),
        None => {
            info!("admission hold active: new Deployments a SidecarPolicy selects start with their sidecars")
        }
    }
    true
}

/// What is wrong with a binding whose namespaceSelector is `selector` for an operator watching
/// `watched` (empty: every namespace): `None` when it can only hold Deployments this operator
/// sees. Only a `kubernetes.io/metadata.name In (...)` requirement narrows it to known names.
pub fn unwatched_hold(selector: Option<&LabelSelector>, watched: &[String]) -> Option<String> {
    if watched.is_empty() {
        return None;
    }
    let named: Option<Vec<&str>> = selector
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .find(|r| r.key == NAMESPACE_NAME_LABEL && r.operator == "In")
        .map(|r| r.values.iter().flatten().map(String::as_str).collect());
    let Some(named) = named else {
        return Some(format!(
            "may hold Deployments in any namespace, but this operator watches only {}: Deployments elsewhere would stay held \
             (use the watch-namespaces component, which narrows both)",
            watched.join(", ")
        ));
    };
    let unwatched: Vec<&str> = named
        .into_iter()
        .filter(|ns| !watched.iter().any(|w| w == ns))
        .collect();
    (!unwatched.is_empty()).then(|| {
        format!(
            "holds Deployments in namespaces this operator does not watch ({}): nobody would release them",
            unwatched.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(requirements: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json!({"matchExpressions": requirements})).unwrap()
    }

    #[test]
    fn a_binding_must_not_hold_where_nobody_releases() {
        let watched = ["team-a".to_owned(), "team-b".to_owned()];
        let narrow = selector(
            json!([{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": ["team-a", "team-b"]}]),
        );
        assert_eq!(unwatched_hold(Some(&narrow), &watched), None);
        assert_eq!(
            unwatched_hold(Some(&narrow), &watched[..1])
                .as_deref()
                .map(|p| p.contains("team-b")),
            Some(true)
        );
        let everywhere =
            selector(json!([{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": ["kube-system"]}]));
        assert!(unwatched_hold(Some(&everywhere), &watched).is_some());
        assert!(unwatched_hold(None, &watched).is_some());
        assert_eq!(
            unwatched_hold(Some(&everywhere), &[]),
            None,
            "a cluster-wide operator sees every namespace"
        );
    }

    #[test]
    fn a_release_is_guarded_and_removes_what_the_hold_set() {
        assert_eq!(
            release_patch(42, true),
            json!([
                {"op": "test", "path": "/metadata/generation", "value": 42},
                {"op": "remove", "path": "/metadata/annotations/sidecar.dev~1held-for"},
                {"op": "remove", "path": "/spec/paused"},
            ])
        );
        let unpaused = release_patch(42, false);
        assert_eq!(
            unpaused.as_array().map(Vec::len),
            Some(2),
            "someone resumed it already: only the annotation goes"
        );
    }
}
