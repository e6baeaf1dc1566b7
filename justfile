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

# Run every test: unit, property, CLI, golden examples, CRD freshness, and the end-to-end
# suite (which skips itself unless SIDECAR_E2E_KUBECONFIG or KUBEBUILDER_ASSETS is set).
test:
    cargo test --workspace --locked

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Regenerate crds/sidecarpolicy.yaml from the Rust types.
crd:
    {{operator}} crd > crds/sidecarpolicy.yaml

# Regenerate each example's golden rendered.yaml (review the diff before committing).
golden:
    for dir in examples/u*/; do \
        {{operator}} render --policy "$dir/policy.yaml" --deployment "$dir/deployment.yaml" \
            $(cat "$dir/render.args") > "$dir/rendered.yaml"; \
    done

# Benchmarks (criterion); figures go in docs/performance.md.
bench:
    cargo bench --package sidecar-core --bench render
