//! How kstatus reads a SidecarPolicy. Shared by the GitOps tests (statuses the operator's code
//! computes) and the e2e suite (statuses as the API server serves them).

use serde_json::Value;

/// How kstatus reads a custom resource it has no special rules for, as Flux's `wait` and
/// `healthChecks` do: the generic rules of sigs.k8s.io/cli-utils `pkg/kstatus/status`
/// (`checkGenericProperties`, then `Current` when none decides), transcribed.
pub fn kstatus(object: &Value) -> &'static str {
    if object["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating";
    }
    let observed = &object["status"]["observedGeneration"];
    if !observed.is_null() && *observed != object["metadata"]["generation"] {
        return "InProgress";
    }
    let conditions = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let holds = |type_: &str| {
        conditions
            .iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    };
    if holds("Reconciling") {
        "InProgress"
    } else if holds("Stalled") {
        "Failed"
    } else {
        "Current"
    }
}
