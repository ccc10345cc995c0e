# syntax=docker/dockerfile:1
# Build stage: compile the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
COPY src src
COPY static static
RUN cargo build --release --locked --bin ratatoskr

# Runtime stage: a small Debian with only the binary, run as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ratatoskr \
    && install -d -o 10001 -g 10001 /var/lib/ratatoskr
COPY --from=build /src/target/release/ratatoskr /usr/local/bin/ratatoskr
USER 10001
ENV RATATOSKR_LISTEN=0.0.0.0:8080 RATATOSKR_DATA_DIR=/var/lib/ratatoskr
# Registrations and event types (redb); mount a volume to keep them.
VOLUME /var/lib/ratatoskr
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ratatoskr"]
