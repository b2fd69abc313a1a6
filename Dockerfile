# syntax=docker/dockerfile:1
# bachata's container image: `docker build -t bachata .` (docs/operations.md,
# "Container"). Linted in CI by scripts/lint-container.py; no container
# engine runs on the CI machine, so the image is not built there.

# The builder: the toolchain CI uses, the locked dependencies.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p bachata-server \
 && cp target/release/bachata /usr/local/bin/bachata

# The runtime: Debian slim, the stripped binary, a user without privileges,
# the embedded store under /data.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bachata \
 && mkdir -p /data \
 && chown bachata:bachata /data
COPY --from=builder /usr/local/bin/bachata /usr/local/bin/bachata
USER bachata
VOLUME /data
EXPOSE 8000
# Every address of the container: the server then refuses to start without
# auth (BACHATA_JWT_SECRET or BACHATA_JWT_PUBLIC_KEY, or BACHATA_CONNECT_HOOK),
# or BACHATA_INSECURE=true for a trial (docs/operations.md, "Container").
ENV BACHATA_LISTEN=0.0.0.0:8000 \
    BACHATA_DATA_DIR=/data
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
ENTRYPOINT ["bachata"]
CMD ["serve"]
