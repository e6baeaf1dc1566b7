//! Which autoscaler APIs the operator watches, for the warnings of the sidecars they skew: HPAs
//! (autoscaling/v2) and VPAs (autoscaling.k8s.io/v1, a CRD of an add-on), each only if the
//! operator may list it. The warnings are advice: without an API the operator works as before,
//! and says so once. A VPA CRD installed after the operator started is picked up by looking for
//! it again now and then, so that no restart is needed.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher;
use tracing::{info, warn};

use super::{Dispatch, uncached_watch};

/// The VerticalPodAutoscaler's API (a CRD of the autoscaler add-on).
const VPA_GROUP_VERSION: &str = "autoscaling.k8s.io/v1";

/// How often the operator looks again for a VPA API that was not served: one discovery request,
/// answered 404 until the add-on is installed.
const VPA_LOOK_AGAIN: Duration = Duration::from_secs(120);

/// The autoscaler APIs found at start.
pub(super) struct AutoscalerApis {
    /// `None` when the operator may not list HPAs.
    hpas: Option<Api<HorizontalPodAutoscaler>>,
    vpas: Vpas,
}

/// The VPA API as found at start.
enum Vpas {
    Watched(Api<DynamicObject>),
    /// Not served: looked for again every [`VPA_LOOK_AGAIN`], and watched once it is.
    NotServed(VpaLookup),
    /// Served, but the operator may not list VPAs (the log said why).
    Off,
}

/// Where to look: the client and the namespace (all when `None`).
struct VpaLookup {
    client: Client,
    namespace: Option<String>,
}

impl AutoscalerApis {
    /// Looks for the HPA and VPA APIs in `namespace` (all when `None`).
    pub(super) async fn discover(client: &Client, namespace: Option<&str>) -> Self {
        let hpas: Api<HorizontalPodAutoscaler> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let hpas = match hpas.list_metadata(&probe_params()).await {
            Ok(_) => Some(hpas),
            Err(e) => {
                warn!(
                    "HorizontalPodAutoscalers are not watched, so their warnings are off: {}",
                    list_error("horizontalpodautoscalers", e)
                );
                None
            }
        };
        let scope = VpaLookup {
            client: client.clone(),
            namespace: namespace.map(str::to_owned),
        };
        let vpas = match probe_vpas(&scope).await {
            Ok(Some(api)) => Vpas::Watched(api),
            Ok(None) => {
                info!(
                    "VerticalPodAutoscalers are not served ({VPA_GROUP_VERSION}); no VPA warnings until they are"
                );
                Vpas::NotServed(scope)
            }
            Err(why) => {
                warn!("VerticalPodAutoscalers are not watched, so their warnings are off: {why}");
                Vpas::Off
            }
        };
        AutoscalerApis { hpas, vpas }
    }

    /// The HPA and VPA watches, each while it is available (a VPA API not served yet is looked
    /// for every [`VPA_LOOK_AGAIN`]). No cache holds the autoscalers: each event updates the
    /// autoscaler index (in dispatch), which keeps only what the warnings need.
    pub(super) fn watches(self, dispatch: &Arc<Dispatch>, config: watcher::Config) -> BoxFuture<'static, ()> {
        let pending = || futures::future::pending().boxed();
        let hpa_watch = self.hpas.map_or_else(pending, |api| {
            let dispatch = dispatch.clone();
            uncached_watch(api, config.clone(), "HorizontalPodAutoscaler", move |e| {
                dispatch.hpa_event(e)
            })
        });
        let dispatch = dispatch.clone();
        let vpa_watch = move |api| {
            uncached_watch(api, config, "VerticalPodAutoscaler", move |e| {
                dispatch.vpa_event(e)
            })
        };
        let vpa_watch = match self.vpas {
            Vpas::Watched(api) => vpa_watch(api),
            Vpas::NotServed(scope) => async move {
                match served_later(&scope, VPA_LOOK_AGAIN).await {
                    Some(api) => vpa_watch(api).await,
                    None => futures::future::pending().await,
                }
            }
            .boxed(),
            Vpas::Off => pending(),
        };
        Box::pin(async move {
            futures::join!(hpa_watch, vpa_watch);
        })
    }
}

/// Looks for the VPA API every `interval` until it is served; `None` when it is then not
/// listable (the log says why).
async fn served_later(scope: &VpaLookup, interval: Duration) -> Option<Api<DynamicObject>> {
    loop {
        tokio::time::sleep(interval).await;
        match probe_vpas(scope).await {
            Ok(None) => {}
            Ok(Some(api)) => {
                info!(
                    "VerticalPodAutoscalers are served now ({VPA_GROUP_VERSION}); watching them for warnings"
                );
                return Some(api);
            }
            Err(why) => {
                warn!(
                    "VerticalPodAutoscalers are served now but not watched, so their warnings are off: {why}"
                );
                return None;
            }
        }
    }
}

/// One look for the VPA API: `Ok(None)` when it is not served, `Err` saying why when it is
/// served but the operator may not list it.
async fn probe_vpas(scope: &VpaLookup) -> Result<Option<Api<DynamicObject>>, String> {
    let resource = match scope.client.list_api_group_resources(VPA_GROUP_VERSION).await {
        Ok(list) => list
            .resources
            .iter()
            .find(|r| r.name == "verticalpodautoscalers")
            .map(|r| {
                ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("autoscaling.k8s.io", "v1", &r.kind),
                    &r.name,
                )
            }),
        // Not served (404) is the usual case: the VPA is an add-on. Another failure is taken
        // the same way: the next look tells.
        Err(_) => None,
    };
    let Some(resource) = resource else {
        return Ok(None);
    };
    let vpas: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(scope.client.clone(), ns, &resource),
        None => Api::all_with(scope.client.clone(), &resource),
    };
    match vpas.list_metadata(&probe_params()).await {
        Ok(_) => Ok(Some(vpas)),
        Err(e) => Err(list_error("verticalpodautoscalers", e)),
    }
}

fn probe_params() -> ListParams {
    ListParams::default().limit(1)
}

/// Why listing `resource` failed, saying what to grant when it was forbidden.
fn list_error(resource: &str, e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the operator may not list {resource} (grant list and watch, as the install's ClusterRole sidecar-operator does)"
        ),
        e => format!("could not list {resource} ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock::Handle;

    const DISCOVERY: &str = "/apis/autoscaling.k8s.io/v1";
    const VPAS: &str = "/apis/autoscaling.k8s.io/v1/namespaces/team-a/verticalpodautoscalers";

    fn lookup() -> (VpaLookup, Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let scope = VpaLookup {
            client: Client::new(service, "default"),
            namespace: Some("team-a".to_owned()),
        };
        (scope, handle)
    }

    fn respond(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn not_found() -> Response<Body> {
        respond(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"}),
        )
    }

    fn served() -> Response<Body> {
        respond(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "autoscaling.k8s.io/v1", "resources": [
                {"name": "verticalpodautoscalers", "singularName": "verticalpodautoscaler", "namespaced": true, "kind": "VerticalPodAutoscaler", "verbs": ["get", "list", "watch"]},
            ]}),
        )
    }

    /// Answers the next request, which must be a GET of `path`.
    async fn answer(
        handle: &mut Handle<Request<Body>, Response<Body>>,
        path: &str,
        response: Response<Body>,
    ) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!((request.method().as_str(), request.uri().path()), ("GET", path));
        send.send_response(response);
    }

    // Time is paused: each sleep between two looks ends at once, in order.
    #[tokio::test(start_paused = true)]
    async fn a_vpa_api_installed_later_is_watched_from_the_next_look() {
        let (scope, mut handle) = lookup();
        let server = tokio::spawn(async move {
            answer(&mut handle, DISCOVERY, not_found()).await;
            answer(&mut handle, DISCOVERY, not_found()).await;
            answer(&mut handle, DISCOVERY, served()).await;
            answer(
                &mut handle,
                VPAS,
                respond(
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []}),
                ),
            )
            .await;
        });
        let start = tokio::time::Instant::now();
        let api = served_later(&scope, VPA_LOOK_AGAIN)
            .await
            .expect("served on the third look");
        assert_eq!(api.resource_url(), VPAS);
        assert_eq!(start.elapsed(), 3 * VPA_LOOK_AGAIN, "one look per interval");
        server.await.unwrap();
    }

    fn forbidden() -> Response<Body> {
        respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_vpa_api_served_later_but_forbidden_is_given_up() {
        let (scope, mut handle) = lookup();
        let server = tokio::spawn(async move {
            answer(&mut handle, DISCOVERY, served()).await;
            answer(&mut handle, VPAS, forbidden()).await;
        });
        assert!(served_later(&scope, VPA_LOOK_AGAIN).await.is_none());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_forbidden_vpa_list_says_what_to_grant() {
        let (scope, mut handle) = lookup();
        let server = tokio::spawn(async move {
            answer(&mut handle, DISCOVERY, served()).await;
            answer(&mut handle, VPAS, forbidden()).await;
        });
        let why = probe_vpas(&scope).await.expect_err("a forbidden list");
        assert!(
            why.starts_with("the operator may not list verticalpodautoscalers (grant list and watch"),
            "{why}"
        );
        server.await.unwrap();
    }
}
