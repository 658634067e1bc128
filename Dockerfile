# syntax=docker/dockerfile:1
# sagalog's container image: build in the Rust image, run in Debian slim as a non-root
# user with nothing but the binary and CA certificates (k8s/base/statefulset.yaml runs it
# with a read-only root filesystem). Build from the repository's root:
#   docker build -t ghcr.io/sagalog/sagalog:0.1.0 .

FROM rust:1.95-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys: its configure script wants a C/C++
# toolchain, make and python3; zlib is linked in (the runtime stage carries zlib1g).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config python3 zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Only the binary: the benches, fuzz targets and tests are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sagalog \
 && install -D -m 0755 target/release/sagalog /out/sagalog

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sagalog \
 && useradd --system --uid 10001 --gid sagalog --home-dir /var/lib/sagalog --shell /usr/sbin/nologin sagalog \
 && install -d -o sagalog -g sagalog -m 0750 /var/lib/sagalog
COPY --from=build /out/sagalog /usr/local/bin/sagalog
USER 10001:10001
WORKDIR /var/lib/sagalog
VOLUME ["/var/lib/sagalog"]
EXPOSE 8080 8081
ENV SAGALOG_DATA_DIR=/var/lib/sagalog/data
ENTRYPOINT ["/usr/local/bin/sagalog"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
