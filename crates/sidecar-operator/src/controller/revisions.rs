//! A policy's history, the Kubernetes way: each revision is a `ControllerRevision` named
//! `<policy>-<revision>`, labelled with both, owned by the policy (the garbage collector deletes
//! them with it; a ClusterSidecarPolicy's live in the operator's `--revision-namespace`, named
//! `clustersidecarpolicy.<policy>-<revision>` and labelled with the kind too), and holding the revision's content under `data.spec`. Its `revision` number
//! grows with every change, so the highest is the current one; a policy changed back to an
//! earlier content reuses that revision and renumbers it, as a DaemonSet's rollback does.
//!
//! What to change is decided by `sidecar_core::revision::history` from the revision cache, the
//! writes the cache may not show yet, and the revisions Deployments still carry (never deleted).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sidecar_api::{
    ClusterSidecarPolicy, DEFAULT_REVISION_HISTORY_LIMIT, POLICY_KIND_LABEL, POLICY_LABEL, REVISION_LABEL,
    SidecarPolicy, SidecarPolicySpec,
};
use sidecar_core::cluster;
use sidecar_core::revision::{self, Change, Stored};
use tracing::info;

use super::FIELD_MANAGER;
use super::context::Context;
use super::error::Error;

/// The longest DNS subdomain, the limit of an object name.
const NAME_MAX: usize = 253;

/// The prefix of a ClusterSidecarPolicy's revision names: `clustersidecarpolicy.<name>-<hash>`,
/// so that they never take the name of a SidecarPolicy's revision in the same namespace.
const CLUSTER_REVISION_PREFIX: &str = "clustersidecarpolicy.";

/// The name of revision `hash` of policy `policy`.
pub fn revision_name(policy: &str, hash: &str) -> String {
    let keep = NAME_MAX - hash.len() - 1;
    let prefix: String = policy.chars().take(keep).collect();
    format!("{prefix}-{hash}")
}

/// The name of revision `hash` of ClusterSidecarPolicy `policy`.
pub fn cluster_revision_name(policy: &str, hash: &str) -> String {
    revision_name(&cluster_revision_prefix(policy), hash)
}

/// What the names of ClusterSidecarPolicy `policy`'s revisions start with.
pub(crate) fn cluster_revision_prefix(policy: &str) -> String {
    format!("{CLUSTER_REVISION_PREFIX}{policy}")
}

/// Whose revisions: a policy of either kind, and where its revisions live.
pub(crate) struct Owner<'a> {
    /// The namespace of its revisions: a SidecarPolicy's own, or the operator's
    /// `--revision-namespace` for a ClusterSidecarPolicy.
    pub namespace: String,
    /// Its name: the value of the `sidecar.dev/policy` label.
    pub name: String,
    /// Its key in the outcome index (see `sidecar_core::cluster`).
    pub key: String,
    /// The prefix of its revisions' names.
    prefix: String,
    pub cluster: bool,
    reference: OwnerReference,
    pub spec: &'a SidecarPolicySpec,
}

impl<'a> Owner<'a> {
    pub fn policy(policy: &'a SidecarPolicy) -> Self {
        let name = policy.name_any();
        Owner {
            namespace: policy.namespace().unwrap_or_default(),
            key: name.clone(),
            prefix: name.clone(),
            cluster: false,
            reference: owner_reference::<SidecarPolicy>(&name, policy.uid()),
            name,
            spec: &policy.spec,
        }
    }

    pub fn cluster_policy(policy: &'a ClusterSidecarPolicy, revision_namespace: &str) -> Self {
        let name = policy.name_any();
        Owner {
            namespace: revision_namespace.to_owned(),
            key: cluster::key(&name),
            prefix: cluster_revision_prefix(&name),
            cluster: true,
            reference: owner_reference::<ClusterSidecarPolicy>(&name, policy.uid()),
            name,
            spec: &policy.spec.policy,
        }
    }

    /// The name of its revision `hash`.
    pub fn revision_name(&self, hash: &str) -> String {
        revision_name(&self.prefix, hash)
    }

    fn uid(&self) -> &str {
        &self.reference.uid
    }

    /// Whether `revision` is one of its own (and not an earlier policy's of the same name).
    pub fn owns(&self, revision: &ControllerRevision) -> bool {
        revision.namespace().as_deref() == Some(self.namespace.as_str())
            && revision.labels().get(POLICY_LABEL) == Some(&self.name)
            && revision
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == self.uid())
    }
}

fn owner_reference<K: Resource<DynamicType = ()>>(name: &str, uid: Option<String>) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        uid: uid.unwrap_or_default(),
        controller: Some(true),
        // Not blockOwnerDeletion: clusters that enforce owner-reference permissions would require
        // update rights on the policy's finalizers for it, and nothing needs the ordering.
        block_owner_deletion: None,
    }
}

/// Brings the stored history of `owner`, whose current revision is `current`, to what it should
/// be: at most a create or renumber, and deletions of revisions no longer kept.
pub(crate) async fn sync_history(ctx: &Context, owner: &Owner<'_>, current: &str) -> Result<(), Error> {
    let namespace = owner.namespace.clone();
    let content = json!({ "spec": revision::content(owner.spec) });
    let stored = stored_revisions(ctx, owner);
    if let Some((_, data)) = stored.get(current)
        && data.as_ref().is_some_and(|data| data != &content)
    {
        return Err(Error::RevisionMismatch {
            namespace,
            name: owner.revision_name(current),
            policy: cluster::describe(&owner.key),
            revision: current.to_owned(),
        });
    }
    let numbered: Vec<Stored> = stored
        .iter()
        .map(|(hash, (number, _))| Stored {
            hash: hash.clone(),
            number: *number,
        })
        .collect();
    let carried: BTreeSet<String> = {
        let outcomes = ctx.outcomes();
        if owner.cluster {
            outcomes.carried_revisions_across(&owner.key)
        } else {
            outcomes.carried_revisions(&namespace, &owner.key)
        }
    }
    .into_keys()
    .collect();
    let limit = owner
        .spec
        .revision_history_limit
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
        .max(0);
    let changes = revision::history(current, &numbered, &carried, usize::try_from(limit).unwrap_or(0));
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = &owner.name;
    for change in changes {
        let write_error = |hash: &str, source| Error::WriteRevision {
            namespace: namespace.clone(),
            name: owner.revision_name(hash),
            policy: cluster::describe(&owner.key),
            source,
        };
        match change {
            Change::Create { number } => {
                let object = controller_revision(owner, current, number, content.clone());
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match api.create(&params, &object).await {
                    Ok(_) => info!(policy = %name, revision = current, number, "stored a new revision"),
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(e) => return Err(write_error(current, e)),
                }
                ctx.wrote_revision(&namespace, &owner.prefix, current, Some(number));
            }
            Change::Renumber { hash, number } => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                api.patch(
                    &owner.revision_name(&hash),
                    &params,
                    &Patch::Merge(json!({ "revision": number })),
                )
                .await
                .map_err(|e| write_error(&hash, e))?;
                info!(policy = %name, revision = %hash, number, "an earlier revision is current again");
                ctx.wrote_revision(&namespace, &owner.prefix, &hash, Some(number));
            }
            Change::Delete { hash } => {
                match api
                    .delete(&owner.revision_name(&hash), &DeleteParams::default())
                    .await
                {
                    Ok(_) => info!(policy = %name, revision = %hash, "deleted an old revision"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(write_error(&hash, e)),
                }
                ctx.wrote_revision(&namespace, &owner.prefix, &hash, None);
            }
        }
        ctx.metrics.wrote("revision");
    }
    Ok(())
}

/// The stored revisions of `owner` by hash: number and content (`None` for content this
/// operator wrote but the cache does not show yet). Revisions owned by an earlier policy of the
/// same name are not this one's.
fn stored_revisions(ctx: &Context, owner: &Owner<'_>) -> BTreeMap<String, (i64, Option<Value>)> {
    let mut stored: BTreeMap<String, (i64, Option<Value>)> = ctx
        .caches
        .revisions
        .state()
        .iter()
        .filter(|r| owner.owns(r))
        .filter_map(|r| {
            let hash = r.labels().get(REVISION_LABEL)?.clone();
            Some((hash, (r.revision.unwrap_or_default(), Some(r.data.0.clone()))))
        })
        .collect();
    ctx.overlay_revisions(&owner.namespace, &owner.prefix, &mut stored);
    stored
}

fn controller_revision(owner: &Owner<'_>, hash: &str, number: i64, content: Value) -> ControllerRevision {
    let mut labels = BTreeMap::from([
        (POLICY_LABEL.to_owned(), owner.name.clone()),
        (REVISION_LABEL.to_owned(), hash.to_owned()),
    ]);
    if owner.cluster {
        labels.insert(POLICY_KIND_LABEL.to_owned(), owner.reference.kind.clone());
    }
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(owner.revision_name(hash)),
            namespace: Some(owner.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![owner.reference.clone()]),
            ..ObjectMeta::default()
        },
        data: RawExtension(content),
        revision: Some(number),
    }
}

#[cfg(test)]
mod tests {
    use super::{cluster_revision_name, revision_name};

    #[test]
    fn names_fit_an_object_name() {
        assert_eq!(revision_name("mesh", "0123456789"), "mesh-0123456789");
        assert_eq!(
            cluster_revision_name("mesh", "0123456789"),
            "clustersidecarpolicy.mesh-0123456789"
        );
        let long = "p".repeat(300);
        assert_eq!(revision_name(&long, "0123456789").len(), 253);
    }
}
