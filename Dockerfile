# syntax=docker/dockerfile:1
# Build stage: compile the release binary. The cargo registry, git
# checkouts and target directory are cache mounts, so a change to src/
# rebuilds only this crate, not its dependencies.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml Cargo.toml Cargo.lock clippy.toml ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
COPY src src
COPY static static
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ratatoskr \
    && cp target/release/ratatoskr /usr/local/bin/ratatoskr

# Runtime stage: a small Debian with only the binary (and CA roots for
# outbound TLS), run as a non-root user. No curl: the health check is the
# binary's own `healthcheck` subcommand.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ratatoskr \
    && install -d -o 10001 -g 10001 /var/lib/ratatoskr
COPY --from=build /usr/local/bin/ratatoskr /usr/local/bin/ratatoskr
USER 10001
ENV RATATOSKR_LISTEN=0.0.0.0:8080 RATATOSKR_DATA_DIR=/var/lib/ratatoskr
# Registrations, event types and accounts (redb); mount a volume to keep them.
VOLUME /var/lib/ratatoskr
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/ratatoskr", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ratatoskr"]
