//! A policy and a Deployment it selects, as a user writes them: the inputs of the CLI tests
//! (`cli.rs`, `cli_bad_input.rs`).

pub const POLICY: &str = r#"apiVersion: sidecar.dev/v1alpha1
kind: SidecarPolicy
metadata: {name: log-shipper}
spec:
  selector: {matchLabels: {app: web}}
  sidecars:
  - name: shipper
    image: busybox:1.36
    startupProbe: {exec: {command: ["true"]}}
    resources: {requests: {cpu: 10m}}
"#;

pub const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "nginx:1.27"}
"#;
