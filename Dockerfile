# relaymesh image: relaymesh-node, relaymesh-control and relaymesh-sim on Debian slim, run
# as the unprivileged user relaymesh (uid 10001). Full build, release binaries compiled in a
# Rust image (the slow part: 10 to 25 minutes on 2 cores, less with the cache of a previous
# build):
#
#   podman build -t relaymesh .          # or docker build
#
# BUILD_IMAGE and RUNTIME_IMAGE name the base images: the official ones by default, local
# ones where those cannot be pulled. The `prebuilt` target packs binaries built elsewhere
# instead of compiling them (scripts/test-deploy does this with the binaries it built):
#
#   podman build --target prebuilt -f Dockerfile DIR    # DIR/bin/relaymesh-{node,control,sim}
#
# Run: `relaymesh-node --config FILE`, `relaymesh-control serve --data-dir
# /var/lib/relaymesh/control ...`; deploy/k8s/ uses this image.

# Keep the Rust version in step with rust-toolchain.toml (scripts/test-deploy checks).
ARG BUILD_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The workspace only, so that a change to docs/ or scripts/ keeps the build cached.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY node node
COPY control-plane control-plane
COPY simulations simulations
# Cache mounts: the crates and target/ stay out of the image's layers and are reused by the
# next build on the same machine (BuildKit, buildah).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin relaymesh-node --bin relaymesh-control --bin relaymesh-sim \
    && mkdir /out \
    && cp target/release/relaymesh-node target/release/relaymesh-control \
        target/release/relaymesh-sim /out/

FROM ${RUNTIME_IMAGE} AS runtime-base
# No packages beyond the base: TLS roots are compiled into the binaries (rustls with
# webpki-roots), and probes are HTTP requests made by the orchestrator.
RUN groupadd --gid 10001 relaymesh \
    && useradd --uid 10001 --gid relaymesh --no-create-home --no-log-init \
        --home-dir /var/lib/relaymesh --shell /usr/sbin/nologin relaymesh \
    && install -d -o relaymesh -g relaymesh -m 0750 /var/lib/relaymesh
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /var/lib/relaymesh
ENV RUST_LOG=info
# Node: clients, HTTP API and ops on 6001/tcp; mesh on 7100 (udp for QUIC, tcp for gRPC).
# Control plane: gRPC on 7000/tcp, /metrics on 7001/tcp.
EXPOSE 6001/tcp 7100/udp 7100/tcp 7000/tcp 7001/tcp
# SIGTERM drains a node (deploy/README.md); the binaries handle it as PID 1.
CMD ["relaymesh-node", "--listen", "0.0.0.0:6001"]

FROM runtime-base AS prebuilt
COPY bin/relaymesh-node bin/relaymesh-control bin/relaymesh-sim /usr/local/bin/

# The default target: the last stage.
FROM runtime-base AS runtime
COPY --from=build /out/ /usr/local/bin/
