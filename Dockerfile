# syntax=docker/dockerfile:1
# The operator's image: build with cargo, run on distroless as a non-root user.
#   docker build -t registry.example.com/platform/sidecar-operator:0.1.0 .
# Then point the install at it: in your overlay, `kustomize edit set image
# ghcr.io/sidecar-dev/sidecar-operator=registry.example.com/platform/sidecar-operator:0.1.0`.

# The toolchain CI uses; the workspace's rust-version is the minimum.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build between builds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package sidecar-operator --bin sidecar-operator \
    && cp target/release/sidecar-operator /sidecar-operator

# glibc, libgcc and CA certificates, no shell, no package manager. The binary links only
# libc, libm and libgcc_s (TLS is rustls), all of which this image has.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /sidecar-operator /usr/local/bin/sidecar-operator
# The same user the Deployment's securityContext asks for (distroless's "nonroot").
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sidecar-operator"]
CMD ["run"]
