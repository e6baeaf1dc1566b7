//! Acting as another user: impersonation (`kubectl --as`), `kubectl auth can-i` as a
//! SelfSubjectAccessReview, and a namespace's policy author (the built-in `edit` role, with the
//! install's aggregated rules).

#![allow(dead_code)]

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use super::cluster::{Cluster, wait_for};
use super::kustomize::{deploy_dir, documents};

/// A client that acts as `user` (impersonation, as `kubectl --as`).
pub async fn client_as(cluster: &Cluster, user: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).unwrap()
}

/// `kubectl auth can-i VERB RESOURCE [-n NAMESPACE]` as the client's user, for a resource of
/// the `sidecar.dev` group.
pub async fn can_i(client: &Client, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    can_i_in(client, verb, "sidecar.dev", resource, namespace).await
}

/// `kubectl auth can-i VERB RESOURCE.GROUP [-n NAMESPACE]` as the client's user (`group` empty
/// for the core group).
pub async fn can_i_in(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "group": group, "resource": resource, "verb": verb, "namespace": namespace,
        }},
    }))
    .unwrap();
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let reviewed = api.create(&PostParams::default(), &review).await.unwrap();
    reviewed.status.is_some_and(|s| s.allowed)
}

/// A client for `user`, bound to the built-in `edit` role in `namespace` only, as a namespace's
/// policy authors are; returns once `edit` includes SidecarPolicies. The install's user roles
/// (`deploy/base/user-roles.yaml`) are applied first; kube-controller-manager aggregates them
/// into `edit`, so the cluster must run it.
pub async fn editor(cluster: &Cluster, user: &str, namespace: &str) -> Client {
    let client = &cluster.client;
    let path = deploy_dir().join("base/user-roles.yaml");
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for role in documents(&std::fs::read_to_string(path).unwrap()) {
        let name = role["metadata"]["name"].as_str().unwrap().to_owned();
        roles
            .patch(
                &name,
                &PatchParams::apply("sidecar-e2e").force(),
                &Patch::Apply(&role),
            )
            .await
            .unwrap();
    }
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-edit"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let as_user = client_as(cluster, user).await;
    wait_for("edit to include SidecarPolicies (aggregation)", || async {
        can_i(&as_user, "create", "sidecarpolicies", Some(namespace))
            .await
            .then_some(())
    })
    .await;
    as_user
}
