# syntax=docker/dockerfile:1.7
# Plexus node image (the daemon and the data steward's commands, `plexus-node
# approve|review|checkpoint`). Build from the repository root:
#   docker build -f deploy/docker/node.Dockerfile -t plexus-node .
# Run: mount node.toml at /etc/plexus/node.toml, the PKI files where it says,
# the hospital's data read-only (e.g. /data) and a volume at /var/lib/plexus
# for the job log, budget ledger, replay cache and review queue.

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
    cargo build --profile dist --locked -p plexus-node \
    && install -D -m 0755 target/dist/plexus-node /out/plexus-node

FROM debian:${DEBIAN_RELEASE}-slim
# The same uid/gid as the coordinator and CLI images.
RUN groupadd --system --gid 10001 plexus \
    && useradd --system --uid 10001 --gid plexus --home-dir /var/lib/plexus --shell /usr/sbin/nologin plexus \
    && install -d -o plexus -g plexus -m 0700 /var/lib/plexus \
    && install -d -m 0755 /etc/plexus /data
COPY --from=builder /out/plexus-node /usr/local/bin/plexus-node
ENV PLEXUS_LOG_FORMAT=json \
    RUST_LOG=info
USER 10001:10001
WORKDIR /var/lib/plexus
VOLUME ["/var/lib/plexus"]
# The node dials out to the coordinator and listens on nothing but
# metrics_listen (9465: /metrics, /healthz, /readyz; "0.0.0.0:9465" in a container).
EXPOSE 9465
# No HTTP client in the image: bash's /dev/tcp asks /healthz for its status line.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9465 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/plexus-node"]
CMD ["--config", "/etc/plexus/node.toml", "run"]
