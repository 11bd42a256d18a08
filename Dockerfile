# syntax=docker/dockerfile:1
# The slatedb-operator image: a release build on Debian bookworm, run on distroless (glibc, no shell, nonroot).
#   docker build -t slatedb-operator .
# e2e/tests/dockerfile.rs checks that the build command, the binary path and the ENTRYPOINT match Cargo.toml.

FROM rust:1.95-bookworm AS builder
# aws-lc-sys (through the object stores' TLS) falls back to a CMake build when its cc build is not possible.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Every SlateDB compression codec comes with this build: Cargo.toml enables them on the slatedb dependency itself
# (no feature flag of this crate can drop one) and the build fails to compile without any of them.
# --locked: build exactly the dependency versions of Cargo.lock. The registry cache speeds up rebuilds; the target
# directory is not a cache mount because the runtime stage copies the binary out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked --bin slatedb-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/slatedb-operator /usr/local/bin/slatedb-operator
USER 65532:65532
# The probes and metrics port (`--http-port`, chart value metrics.port).
EXPOSE 8080
# The chart passes its flags as container args, appended after `run` (--log-format is global and accepted there).
ENTRYPOINT ["slatedb-operator", "run"]
