//! How far a fleet has converged, seen through one metadata-only watch (the record is an
//! annotation, so nothing else is needed, and the watch costs the API server and this process
//! little beside the operator).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, ResourceExt};
use sidecar_api::INJECTED_ANNOTATION;
use sidecar_core::InjectionRecord;

use crate::Error;
use crate::fleet::{FLEET_LABEL, POLICY};

/// The revision of the bench policy each Deployment carries (`None`: no record, or not the
/// policy), by (namespace, name).
type Carried = HashMap<(String, String), Option<String>>;

#[derive(Clone, Debug, Default)]
pub struct Progress {
    carried: Arc<Mutex<Carried>>,
}

impl Progress {
    /// Starts watching every fleet Deployment of the cluster.
    pub fn watch(client: &Client) -> Self {
        let progress = Progress::default();
        let carried = progress.carried.clone();
        // Metadata only: the record is an annotation.
        let api: Api<PartialObjectMeta<Deployment>> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{FLEET_LABEL}=scale"));
        tokio::spawn(async move {
            let mut stream = watch(api, config).default_backoff().boxed();
            let mut buffer = Carried::new();
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                let mut carried = carried.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Event::Apply(meta) => {
                        carried.insert(key(&meta), revision(&meta));
                    }
                    Event::Delete(meta) => {
                        carried.remove(&key(&meta));
                    }
                    Event::Init => buffer.clear(),
                    Event::InitApply(meta) => {
                        buffer.insert(key(&meta), revision(&meta));
                    }
                    Event::InitDone => *carried = std::mem::take(&mut buffer),
                }
            }
        });
        progress
    }

    /// How many Deployments of `namespaces` satisfy `test` (given the revision they carry).
    pub fn count(&self, namespaces: &[String], test: impl Fn(Option<&str>) -> bool) -> usize {
        let carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        carried
            .iter()
            .filter(|((ns, _), _)| namespaces.contains(ns))
            .filter(|(_, revision)| test(revision.as_deref()))
            .count()
    }

    /// Waits until `want` Deployments of `namespaces` satisfy `test`; returns the time since `start`.
    pub async fn wait(
        &self,
        what: &str,
        namespaces: &[String],
        want: usize,
        start: Instant,
        patience: Duration,
        test: impl Fn(Option<&str>) -> bool,
    ) -> Result<Duration, Error> {
        loop {
            let have = self.count(namespaces, &test);
            if have >= want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > patience {
                return Err(Error::Timeout(format!("{what}: {have} of {want}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn key(meta: &impl ResourceExt) -> (String, String) {
    (meta.namespace().unwrap_or_default(), meta.name_any())
}

fn revision(meta: &impl ResourceExt) -> Option<String> {
    let record = InjectionRecord::parse(meta.annotations().get(INJECTED_ANNOTATION)?).ok()?;
    Some(record.entry(POLICY)?.revision.clone())
}
