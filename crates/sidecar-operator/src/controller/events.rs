//! Events, best effort: the log says the same. Callers send them on transitions only (a new
//! outcome, a condition that turns true), never on every reconcile, so an idle operator writes
//! none; and a refusal already reported by an earlier process is not reported again.
//!
//! In the operator, Events are sent from the background, a few at a time, and after the writes
//! they report: while Deployments are being written, an Event waits until the writing has paused
//! (at most a few seconds). A change to a thousand Deployments is written first and reported
//! right after, rather than competing with its own writes for the API server. Tests send Events
//! inline, in order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;
use tracing::warn;

use super::FIELD_MANAGER;
use crate::metrics::Metrics;

/// Events carry at most this much text (the API server limits notes to 1 kB).
const NOTE_LIMIT: usize = 1000;

/// Events sent at once from the background.
const BACKGROUND_EVENTS: usize = 4;
/// A background Event waits until no Deployment was written for this long...
const QUIET: Duration = Duration::from_millis(250);
/// ...but no longer than this, so that constant writing cannot silence Events.
const MAX_DEFER: Duration = Duration::from_secs(5);

/// Where Events go.
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    /// Present when Events are sent from the background: at most this many at once.
    background: Option<Arc<Semaphore>>,
    /// When a Deployment was last written.
    last_write: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("background", &self.background.is_some())
            .finish_non_exhaustive()
    }
}

/// One Event to send.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
}

impl Report {
    pub fn new(
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &'static str,
        note: String,
    ) -> Self {
        Report {
            regarding,
            type_,
            reason: reason.to_owned(),
            action,
            note: truncate(note),
        }
    }
}

impl Events {
    /// Events sent inline: `publish` returns once the Event is written.
    pub fn inline(client: kube::Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        Events {
            client,
            reporter,
            metrics,
            background: None,
            last_write: Arc::default(),
        }
    }

    /// A Deployment was just written: background Events wait for the writing to pause.
    pub(crate) fn deployment_written(&self) {
        *self.last_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Waits until no Deployment was written for [`QUIET`], or [`MAX_DEFER`] has passed.
    async fn after_the_writes(&self) {
        let start = Instant::now();
        loop {
            let last = *self.last_write.lock().unwrap_or_else(|p| p.into_inner());
            let quiet_for = last.map_or(QUIET, |at| at.elapsed());
            let waited = start.elapsed();
            if quiet_for >= QUIET || waited >= MAX_DEFER {
                return;
            }
            tokio::time::sleep((QUIET - quiet_for).min(MAX_DEFER - waited)).await;
        }
    }

    /// The same Events, sent from the background.
    pub fn in_background(self) -> Self {
        Events {
            background: Some(Arc::new(Semaphore::new(BACKGROUND_EVENTS))),
            ..self
        }
    }

    pub(crate) async fn publish(&self, report: Report) {
        match &self.background {
            None => self.send(report).await,
            Some(permits) => {
                let (events, permits) = (self.clone(), permits.clone());
                self.metrics.event_queued();
                tokio::spawn(async move {
                    events.after_the_writes().await;
                    // A closed semaphore cannot happen (it is never closed); send anyway.
                    let _permit = permits.acquire().await.ok();
                    events.send(report).await;
                    events.metrics.event_sent();
                });
            }
        }
    }

    async fn send(&self, report: Report) {
        let event = Event {
            type_: report.type_,
            reason: report.reason.clone(),
            note: Some(report.note),
            action: report.action.to_owned(),
            secondary: None,
        };
        // A recorder per Event: kube's keeps every Event it sent for six minutes, to patch
        // repeats into a series; these are sent on transitions, rarely repeat, and a rollout over
        // thousands of Deployments would otherwise hold thousands of them.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &report.regarding).await {
            Ok(()) => self.metrics.wrote("event"),
            Err(e) => warn!(
                kind = report.regarding.kind.as_deref().unwrap_or_default(),
                name = report.regarding.name.as_deref().unwrap_or_default(),
                "could not publish Event {}: {e}",
                report.reason
            ),
        }
    }
}

/// Whether an Event like `report` from this operator exists already (an earlier process sent
/// it; Events live an hour by default). Read errors count as "no": a repeated Event is better
/// than a lost one.
pub(crate) async fn reported_before(client: &kube::Client, report: &Report) -> bool {
    let (Some(namespace), Some(name), Some(kind)) = (
        report.regarding.namespace.as_deref(),
        report.regarding.name.as_deref(),
        report.regarding.kind.as_deref(),
    ) else {
        return false;
    };
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!(
        "regarding.name={name},reason={},reportingController={FIELD_MANAGER}",
        report.reason
    );
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list.items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
                && e.note.as_deref() == Some(report.note.as_str())
        }),
        Err(e) => {
            warn!("could not list Events of {kind} {namespace}/{name}: {e}");
            false
        }
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > NOTE_LIMIT {
        let mut cut = NOTE_LIMIT - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}
