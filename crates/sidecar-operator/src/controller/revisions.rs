//! A policy's history, the Kubernetes way: each revision is a `ControllerRevision` named
//! `<policy>-<revision>`, labelled with both, owned by the policy (the garbage collector deletes
//! them with it), and holding the revision's content under `data.spec`. Its `revision` number
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
use sidecar_api::{DEFAULT_REVISION_HISTORY_LIMIT, POLICY_LABEL, REVISION_LABEL, SidecarPolicy};
use sidecar_core::revision::{self, Change, Stored};
use tracing::info;

use super::FIELD_MANAGER;
use super::context::Context;
use super::error::Error;

/// The longest DNS subdomain, the limit of an object name.
const NAME_MAX: usize = 253;

/// The name of revision `hash` of policy `policy`.
pub fn revision_name(policy: &str, hash: &str) -> String {
    let keep = NAME_MAX - hash.len() - 1;
    let prefix: String = policy.chars().take(keep).collect();
    format!("{prefix}-{hash}")
}

/// Brings the stored history of `policy`, whose current revision is `current`, to what it
/// should be: at most a create or renumber, and deletions of revisions no longer kept.
pub(crate) async fn sync_history(ctx: &Context, policy: &SidecarPolicy, current: &str) -> Result<(), Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let content = json!({ "spec": revision::content(&policy.spec) });
    let stored = stored_revisions(ctx, policy);
    if let Some((_, data)) = stored.get(current)
        && data.as_ref().is_some_and(|data| data != &content)
    {
        return Err(Error::RevisionMismatch {
            namespace,
            name: revision_name(&name, current),
            policy: name,
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
    let carried: BTreeSet<String> = ctx
        .outcomes()
        .carried_revisions(&namespace, &name)
        .into_keys()
        .collect();
    let limit = policy
        .spec
        .revision_history_limit
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
        .max(0);
    let changes = revision::history(current, &numbered, &carried, usize::try_from(limit).unwrap_or(0));
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
    for change in changes {
        let write_error = |hash: &str, source| Error::WriteRevision {
            namespace: namespace.clone(),
            name: revision_name(&name, hash),
            policy: name.clone(),
            source,
        };
        match change {
            Change::Create { number } => {
                let object = controller_revision(policy, current, number, content.clone());
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match api.create(&params, &object).await {
                    Ok(_) => info!(policy = %name, revision = current, number, "stored a new revision"),
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(e) => return Err(write_error(current, e)),
                }
                ctx.wrote_revision(&namespace, &name, current, Some(number));
            }
            Change::Renumber { hash, number } => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                api.patch(
                    &revision_name(&name, &hash),
                    &params,
                    &Patch::Merge(json!({ "revision": number })),
                )
                .await
                .map_err(|e| write_error(&hash, e))?;
                info!(policy = %name, revision = %hash, number, "an earlier revision is current again");
                ctx.wrote_revision(&namespace, &name, &hash, Some(number));
            }
            Change::Delete { hash } => {
                match api
                    .delete(&revision_name(&name, &hash), &DeleteParams::default())
                    .await
                {
                    Ok(_) => info!(policy = %name, revision = %hash, "deleted an old revision"),
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(write_error(&hash, e)),
                }
                ctx.wrote_revision(&namespace, &name, &hash, None);
            }
        }
        ctx.metrics.wrote("revision");
    }
    Ok(())
}

/// The stored revisions of `policy` by hash: number and content (`None` for content this
/// operator wrote but the cache does not show yet). Revisions owned by an earlier policy of the
/// same name are not this one's.
fn stored_revisions(ctx: &Context, policy: &SidecarPolicy) -> BTreeMap<String, (i64, Option<Value>)> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let uid = policy.uid();
    let mut stored: BTreeMap<String, (i64, Option<Value>)> = ctx
        .caches
        .revisions
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|r| r.labels().get(POLICY_LABEL) == Some(&name))
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .filter_map(|r| {
            let hash = r.labels().get(REVISION_LABEL)?.clone();
            Some((hash, (r.revision.unwrap_or_default(), Some(r.data.0.clone()))))
        })
        .collect();
    ctx.overlay_revisions(&namespace, &name, &mut stored);
    stored
}

fn controller_revision(
    policy: &SidecarPolicy,
    hash: &str,
    number: i64,
    content: Value,
) -> ControllerRevision {
    let name = policy.name_any();
    let owner = OwnerReference {
        api_version: SidecarPolicy::api_version(&()).into_owned(),
        kind: SidecarPolicy::kind(&()).into_owned(),
        name: name.clone(),
        uid: policy.uid().unwrap_or_default(),
        controller: Some(true),
        // Not blockOwnerDeletion: clusters that enforce owner-reference permissions would require
        // update rights on the policy's finalizers for it, and nothing needs the ordering.
        block_owner_deletion: None,
    };
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&name, hash)),
            namespace: policy.namespace(),
            labels: Some(BTreeMap::from([
                (POLICY_LABEL.to_owned(), name),
                (REVISION_LABEL.to_owned(), hash.to_owned()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: RawExtension(content),
        revision: Some(number),
    }
}

#[cfg(test)]
mod tests {
    use super::revision_name;

    #[test]
    fn names_fit_an_object_name() {
        assert_eq!(revision_name("mesh", "0123456789"), "mesh-0123456789");
        let long = "p".repeat(300);
        assert_eq!(revision_name(&long, "0123456789").len(), 253);
    }
}
