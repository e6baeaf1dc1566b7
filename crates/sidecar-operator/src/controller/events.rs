//! Events, best effort: the log says the same. Callers send them on transitions only (a new
//! outcome, a condition that turns true), never on every reconcile, so an idle operator writes
//! none.
//!
//! A refusal is reported once, even across restarts: its Event is named after its content (the
//! object, reason and note), so the report of an earlier process is found by name, for free: the
//! create answers "already exists". Reported again in the same process (the refusal went away and
//! came back), it gets an Event of its own.
//!
//! In the operator, Events are sent from the background by a few workers, after the writes they
//! report: while Deployments are being written, an Event waits until the writing has paused (at
//! most a few seconds). A change to a thousand Deployments is written first and reported right
//! after, rather than competing with its own writes for the API server. Tests send Events inline,
//! in order.

use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fnv::FnvHasher;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;
use tracing::warn;

use super::FIELD_MANAGER;
use crate::metrics::Metrics;

/// Events carry at most this much text (the API server limits notes to 1 kB).
const NOTE_LIMIT: usize = 1000;
/// Workers sending Events from the background, so at most this many at once.
const BACKGROUND_EVENTS: usize = 4;
/// A background Event waits until no Deployment was written for this long...
const QUIET: Duration = Duration::from_millis(250);
/// ...but no longer than this, so that constant writing cannot silence Events.
const MAX_DEFER: Duration = Duration::from_secs(5);
/// The longest object name (a DNS subdomain).
const NAME_MAX: usize = 253;

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// One Event to send.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
    /// Reported once (named after its content): `Some(first)`, where `first` says this process
    /// has not reported it before, so an existing Event of that name is an earlier process's.
    once: Option<bool>,
}

impl Report {
    /// An Event of its own every time it is sent.
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
            once: None,
        }
    }

    /// Reported once: not again if an earlier process reported it already (when `first`: this
    /// process has not reported it yet).
    pub fn once(mut self, first: bool) -> Self {
        self.once = Some(first);
        self
    }

    /// The name of the Event that reports this once: the object's name and a hash of the rest.
    fn content_name(&self) -> String {
        // FNV-1a: stable across releases, so a newer operator finds the Events an older one named.
        let mut hasher = FnvHasher::default();
        for part in [
            self.regarding.kind.as_deref().unwrap_or_default(),
            self.regarding.uid.as_deref().unwrap_or_default(),
            &self.reason,
            &self.note,
        ] {
            hasher.write(part.as_bytes());
            hasher.write(&[0]);
        }
        event_name(&self.regarding, &format!("{:016x}", hasher.finish()))
    }
}

/// `<object name>.<suffix>`, within the limit of an object name.
fn event_name(regarding: &ObjectReference, suffix: &str) -> String {
    let object = regarding.name.as_deref().unwrap_or("object");
    let keep = NAME_MAX - suffix.len() - 1;
    let prefix: String = object.chars().take(keep).collect();
    format!("{prefix}.{suffix}")
}

/// Where Events go.
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    /// `reportingInstance`: the pod's name in a cluster.
    instance: String,
    metrics: Arc<Metrics>,
    /// Present when Events are sent from the background: the queue a few workers send from.
    background: Option<mpsc::UnboundedSender<(Instant, Report)>>,
    /// When a Deployment was last written.
    last_write: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("instance", &self.instance)
            .field("background", &self.background.is_some())
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Events sent inline: `publish` returns once the Event is written.
    pub fn inline(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Events {
            client,
            instance: std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.to_owned()),
            metrics,
            background: None,
            last_write: Arc::default(),
        }
    }

    /// The same Events, sent from the background by a few workers (call within a Tokio
    /// runtime). A queued Event costs its text, not a task.
    pub fn in_background(self) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let events = Events {
            background: Some(queue),
            ..self
        };
        for _ in 0..BACKGROUND_EVENTS {
            let (worker, receiver) = (events.clone_inline(), receiver.clone());
            tokio::spawn(async move {
                loop {
                    let next = receiver.lock().await.recv().await;
                    let Some((queued, report)) = next else {
                        return; // every sender is gone: the operator is stopping
                    };
                    worker.after_the_writes(queued).await;
                    worker.send(report).await;
                    worker.metrics.event_sent();
                }
            });
        }
        events
    }

    /// A handle that sends inline, sharing the write clock (for the workers: a worker holding a
    /// queue sender would keep its own queue open forever).
    fn clone_inline(&self) -> Self {
        Events {
            background: None,
            ..self.clone()
        }
    }

    /// A Deployment was just written: background Events wait for the writing to pause.
    pub(crate) fn deployment_written(&self) {
        *self.last_write.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Waits until no Deployment was written for [`QUIET`], or [`MAX_DEFER`] has passed since
    /// `queued`.
    async fn after_the_writes(&self, queued: Instant) {
        loop {
            let last = *self.last_write.lock().unwrap_or_else(|p| p.into_inner());
            let quiet_for = last.map_or(QUIET, |at| at.elapsed());
            let waited = queued.elapsed();
            if quiet_for >= QUIET || waited >= MAX_DEFER {
                return;
            }
            tokio::time::sleep((QUIET - quiet_for).min(MAX_DEFER - waited)).await;
        }
    }

    pub(crate) async fn publish(&self, report: Report) {
        match &self.background {
            None => self.send(report).await,
            Some(queue) => {
                if queue.send((Instant::now(), report)).is_ok() {
                    self.metrics.event_queued();
                }
            }
        }
    }

    async fn send(&self, report: Report) {
        let now = Timestamp::now();
        let timed_name = || event_name(&report.regarding, &format!("{:x}", now.as_nanosecond()));
        let name = match report.once {
            Some(_) => report.content_name(),
            None => timed_name(),
        };
        match self.create(&report, name, now).await {
            Ok(()) => self.metrics.wrote("event"),
            Err(kube::Error::Api(status)) if status.code == 409 => match report.once {
                // An earlier process reported it already.
                Some(true) => {}
                // Reported before by this process; this is a new occurrence.
                _ => match self.create(&report, timed_name(), now).await {
                    Ok(()) => self.metrics.wrote("event"),
                    Err(e) => self.failed(&report, &e),
                },
            },
            Err(e) => self.failed(&report, &e),
        }
    }

    async fn create(&self, report: &Report, name: String, now: Timestamp) -> Result<(), kube::Error> {
        let namespace = report
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(report.action.to_owned()),
            reason: Some(report.reason.clone()),
            note: Some(report.note.clone()),
            type_: Some(
                match report.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            regarding: Some(report.regarding.clone()),
            reporting_controller: Some(FIELD_MANAGER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await.map(|_| ())
    }

    fn failed(&self, report: &Report, error: &kube::Error) {
        warn!(
            kind = report.regarding.kind.as_deref().unwrap_or_default(),
            name = report.regarding.name.as_deref().unwrap_or_default(),
            "could not publish Event {}: {error}",
            report.reason
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Deployment".into()),
            name: Some(name.into()),
            namespace: Some("demo".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn a_report_once_is_named_after_its_content() {
        let report = |note: &str| {
            Report::new(
                reference("web"),
                EventType::Warning,
                "Conflict",
                "Render",
                note.into(),
            )
        };
        let name = report("a").content_name();
        assert!(name.starts_with("web."), "{name}");
        assert_eq!(name, report("a").content_name(), "the same report, the same name");
        assert_ne!(name, report("b").content_name());
        let long = Report::new(
            reference(&"w".repeat(300)),
            EventType::Warning,
            "Conflict",
            "Render",
            "a".into(),
        );
        assert_eq!(long.content_name().len(), NAME_MAX);
    }
}
