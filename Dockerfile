# sagalog in a container: a multi-stage build (the Rust toolchain stays in the first stage)
# and a small Debian runtime that runs as a non-root user. Not the only way to run sagalog:
# `cargo install --path .` (README) gives the same binary.
#
#   docker build -t sagalog .
#   docker run -p 50051:50051 -p 50052:50052 -v sagalog-data:/data sagalog
#
# The data directory is the volume /data. Kubernetes probes: docs/operations.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && strip target/release/sagalog

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin sagalog \
    && mkdir -p /data && chown sagalog /data
COPY --from=build /src/target/release/sagalog /usr/local/bin/sagalog
USER sagalog
VOLUME /data
EXPOSE 50051 50052
ENTRYPOINT ["sagalog"]
# Listen on every interface inside the container; the config's [server] block must then have
# tokens (anonymous mode is meant for loopback only), see docs/api.md.
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:50051"]
