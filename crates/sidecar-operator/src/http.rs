//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::runtime::reflector::Store;

use crate::controller::{Context, DeploymentView};
use crate::metrics::Metrics;

/// What the endpoints report on. Clones share their state.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the watch caches are filled and the controllers can reconcile (or while a
    /// replica stands by for leadership).
    pub ready: Arc<AtomicBool>,
    /// The contexts of every scope, for the gauges; empty until the controllers start.
    scopes: Arc<RwLock<Vec<Arc<Context>>>>,
}

impl Health {
    /// Reports on these scopes from now on.
    pub fn watch(&self, scopes: Vec<Arc<Context>>) {
        *self
            .scopes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = scopes;
    }
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches are still filling")
    }
}

async fn metrics(State(health): State<Health>) -> (StatusCode, String) {
    let scopes = health
        .scopes
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let managed = scopes.iter().map(|ctx| managed(&ctx.caches.deployments)).sum();
    health.metrics.set_managed(managed);
    let held = scopes.iter().map(|ctx| ctx.outcomes().held()).sum();
    health.metrics.set_held(held);
    let synced = !scopes.is_empty() && scopes.iter().all(|ctx| ctx.outcomes_synced());
    health.metrics.set_synced(synced);
    match health.metrics.encode() {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        ),
    }
}

/// How many cached Deployments carry something the operator injected.
fn managed(deployments: &Store<DeploymentView>) -> usize {
    deployments.state().iter().filter(|d| d.managed).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let health = Health::default();
        let app = router(health.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        health.metrics.wrote("status");
        let (status, text) = get(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("sidecar_operator_writes_total{kind=\"status\"} 1"),
            "{text}"
        );
    }
}
