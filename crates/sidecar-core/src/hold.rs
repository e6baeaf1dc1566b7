//! The admission hold: a Deployment created paused by the install's MutatingAdmissionPolicy
//! (`deploy/components/admission-hold`) until the operator has rendered it, so that its first
//! ReplicaSet already has the sidecars. The API server writes the hold; the operator only reads
//! it here and releases it (the controller's write path).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sidecar_api::HELD_FOR_ANNOTATION;

/// The SidecarPolicies a held Deployment waits for, from its `sidecar.dev/held-for` annotation
/// (comma-separated, in the order the admission policy saw them); `None` when it is not held.
pub fn held_for(metadata: &ObjectMeta) -> Option<Vec<&str>> {
    let value = metadata.annotations.as_ref()?.get(HELD_FOR_ANNOTATION)?;
    Some(
        value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(annotation: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            annotations: annotation.map(|value| [(HELD_FOR_ANNOTATION.to_owned(), value.to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn reads_the_policies_a_deployment_waits_for() {
        assert_eq!(held_for(&meta(None)), None);
        assert_eq!(held_for(&meta(Some("mesh"))), Some(vec!["mesh"]));
        assert_eq!(held_for(&meta(Some("mesh,logs"))), Some(vec!["mesh", "logs"]));
        assert_eq!(
            held_for(&meta(Some(""))),
            Some(vec![]),
            "held, for no policy it names"
        );
    }
}
