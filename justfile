# Everyday commands for sidecar-operator. `just --list` shows them all.
# Without just: each recipe is a plain cargo command you can copy.

set shell := ["bash", "-euo", "pipefail", "-c"]

operator := "cargo run --quiet --package sidecar-operator --"

# List the recipes.
default:
    @just --list

# Show the operator's main job without a cluster: render a use-case example and diff it.
demo example="u1-log-shipping":
    {{operator}} render \
        --policy examples/{{example}}/policy.yaml \
        --deployment examples/{{example}}/deployment.yaml \
        $(cat examples/{{example}}/render.args) --diff

# Render an example to stdout (the full Deployment).
render example="u1-log-shipping":
    {{operator}} render \
        --policy examples/{{example}}/policy.yaml \
        --deployment examples/{{example}}/deployment.yaml \
        $(cat examples/{{example}}/render.args)

# Run every test (the e2e suite skips itself unless SIDECAR_E2E_KUBECONFIG or KUBEBUILDER_ASSETS is set).
test:
    cargo test --workspace --locked

# End-to-end suite: against SIDECAR_E2E_KUBECONFIG's cluster (Kubernetes >= 1.29), or a throwaway
# control plane per test from KUBEBUILDER_ASSETS (a directory with kube-apiserver and etcd, and
# kube-controller-manager for the tests that need Deployment status and garbage collection).
# e2e_install runs the built binary under the install's own RBAC, so build it first.
# --no-fail-fast: a failing test file does not hide the others' results.
e2e *filter:
    cargo build --package sidecar-operator --locked
    cargo test --package sidecar-tests --test e2e --test e2e_fleet --test e2e_hold --test e2e_rollout --test e2e_cluster --test e2e_plan --test e2e_install --test e2e_corpus --test e2e_security --locked --no-fail-fast -- --nocapture --test-threads=1 {{filter}}

# The chaos run (not part of `test`): a throwaway control plane from KUBEBUILDER_ASSETS (with
# kube-controller-manager), two operator replicas, and a storm of kills, API server restarts and a
# network cut; then every Deployment and status is checked (docs/reliability.md).
chaos seed="20261202" steps="300":
    cargo build --package sidecar-operator --locked
    SIDECAR_CHAOS=1 SIDECAR_CHAOS_SEED={{seed}} SIDECAR_CHAOS_STEPS={{steps}} cargo test --package sidecar-tests --test chaos --locked -- --nocapture

# Run the operator against the current kubeconfig's cluster (install the CRD first: `just install-crd`).
run *args:
    {{operator}} run {{args}}

# Show what policy files would change in the current kubeconfig's cluster (read-only), e.g.
# `just plan --policy policy.yaml --diff`.
plan *args:
    {{operator}} plan {{args}}

# Install the binary as the kubectl plugin `kubectl sidecar` (a link named kubectl-sidecar on PATH):
# then `kubectl sidecar explain deployment web -n demo`.
kubectl-plugin dir="~/.local/bin":
    cargo install --locked --path crates/sidecar-operator
    mkdir -p {{dir}}
    ln -sf "$(command -v sidecar-operator)" {{dir}}/kubectl-sidecar

# Install or update the CRD in the current kubeconfig's cluster.
install-crd:
    kubectl apply --server-side -f crds/sidecarpolicy.yaml -f crds/clustersidecarpolicy.yaml

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Regenerate crds/sidecarpolicy.yaml and crds/clustersidecarpolicy.yaml from the Rust types.
crd:
    {{operator}} crd --kind SidecarPolicy > crds/sidecarpolicy.yaml
    {{operator}} crd --kind ClusterSidecarPolicy > crds/clustersidecarpolicy.yaml

# Regenerate each example's golden rendered.yaml (review the diff before committing).
golden:
    for dir in examples/u*/; do \
        {{operator}} render --policy "$dir/policy.yaml" --deployment "$dir/deployment.yaml" \
            $(cat "$dir/render.args") > "$dir/rendered.yaml"; \
    done

# Not part of `just test` (which replays the seeds on stable). The fuzz crate builds with the
# workspace's Cargo.lock, so it fuzzes the versions CI tests. Needs nightly and cargo-fuzz.
# Fuzz one target (record, render_input or engine) for `seconds`, one worker (docs/fuzzing.md).
fuzz target="engine" seconds="600":
    cp Cargo.lock fuzz/Cargo.lock
    mkdir -p fuzz/corpus/{{target}}
    cd fuzz && cargo +nightly fuzz run {{target}} corpus/{{target}} seeds/{{target}} -- \
        -max_total_time={{seconds}} -jobs=1 -workers=1

# Benchmarks (criterion); figures go in docs/performance.md.
bench:
    cargo bench --package sidecar-core --bench render

# The scale harness against a fresh cluster (docs/performance.md): N Deployments per layout.
# `--hold`: only the admission hold instead (Kubernetes 1.36+): N Deployments created at once per
# round (`--hold-rate R`: R a second), their create-to-release latency and ReplicaSets.
scale kubeconfig deployments="1000" *args:
    cargo build --release --locked --package sidecar-operator --package sidecar-bench
    target/release/scale --kubeconfig {{kubeconfig}} --deployments {{deployments}} {{args}}
