# syntax=docker/dockerfile:1.7
# Plexus coordinator image, (target `cli`) the `plexus` admin and
# researcher CLI, and (target `sample-data`, for the compose file's
# development network only) the CLI with `plexus synth`. Build from the
# repository root:
#   docker build -f deploy/docker/coordinator.Dockerfile -t plexus-coordinator .
#   docker build -f deploy/docker/coordinator.Dockerfile --target cli -t plexus-cli .
# Run: mount coordinator.toml at /etc/plexus/coordinator.toml, the PKI files
# where it says, and a volume at /var/lib/plexus for a SQLite store.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The registry, git checkouts and target/ live in BuildKit cache mounts, so a
# rebuild after a source change recompiles only the workspace crates.
# The dist profile (Cargo.toml) is the release build stripped of debug
# information and symbols: a tenth of the size.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist --locked -p plexus-coordinator -p plexus \
    && install -D -m 0755 target/dist/plexus-coordinator /out/plexus-coordinator \
    && install -D -m 0755 target/dist/plexus /out/plexus

FROM debian:${DEBIAN_RELEASE}-slim AS runtime-base
# One fixed uid/gid for every Plexus image, so volumes written by one
# container (the dev CA job) are readable by the others.
RUN groupadd --system --gid 10001 plexus \
    && useradd --system --uid 10001 --gid plexus --home-dir /var/lib/plexus --shell /usr/sbin/nologin plexus \
    && install -d -o plexus -g plexus -m 0700 /var/lib/plexus /pki \
    && install -d -o plexus -g plexus -m 0755 /demo \
    && install -d -m 0755 /etc/plexus
ENV PLEXUS_LOG_FORMAT=json \
    RUST_LOG=info

FROM runtime-base AS cli
COPY --from=builder /out/plexus /usr/local/bin/plexus
USER 10001:10001
WORKDIR /var/lib/plexus
VOLUME ["/pki"]
ENTRYPOINT ["/usr/local/bin/plexus"]
CMD ["--help"]

# `plexus synth` comes with the CLI's demo feature, which links both
# daemons: a build of its own for the sample-data image, so the `cli`
# image stays the CLI researchers install.
FROM builder AS demo-builder
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile dist --locked -p plexus --features demo \
    && install -D -m 0755 target/dist/plexus /out/plexus-demo

FROM runtime-base AS sample-data
COPY --from=demo-builder /out/plexus-demo /usr/local/bin/plexus
USER 10001:10001
WORKDIR /var/lib/plexus
ENTRYPOINT ["/usr/local/bin/plexus"]
CMD ["synth", "--out", "/demo"]

FROM runtime-base AS coordinator
COPY --from=builder /out/plexus-coordinator /usr/local/bin/plexus-coordinator
USER 10001:10001
WORKDIR /var/lib/plexus
VOLUME ["/var/lib/plexus"]
# 7443: gRPC over mutual TLS; 9464: /metrics, /healthz, /readyz
# (metrics_listen, which must then be "0.0.0.0:9464").
EXPOSE 7443 9464
# No HTTP client in the image: bash's /dev/tcp asks /healthz for its status line.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/plexus-coordinator"]
CMD ["--config", "/etc/plexus/coordinator.toml"]
