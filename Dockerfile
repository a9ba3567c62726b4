# syntax=docker/dockerfile:1
# The scopegate image, for publishing (BuildKit, podman/buildah, kaniko):
#
#   docker build -t registry.example.com/scopegate:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Stage `build` compiles the release binary and collects exactly what it needs at run time
# (scripts/image-rootfs.sh: the shared libraries `ldd` lists, CA certificates, a passwd entry
# for the non-root user 65532). The final image is FROM scratch with only that: no shell, no
# package manager, nothing writable needed (it runs with readOnlyRootFilesystem: true).
#
# Where no base image can be pulled (a machine without registry access), scripts/build-image.sh
# builds the same final stage, taken from this file, around a locally built binary, then proves
# it: the entrypoint answers a Check as the image's user inside the image's own filesystem.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
# protoc: etcd-client's build script. binutils: objcopy. ca-certificates: copied into the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler binutils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin scopegate \
 && scripts/image-rootfs.sh target/release/scopegate /rootfs

# ---- runtime (scripts/build-image.sh builds from this line on) ----
FROM scratch AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=build /rootfs/ /
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="Envoy ext_authz gRPC server: verifies OAuth 2.0 JWT access tokens and enforces scope rules from etcd or a rules file" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/scopegate/scopegate" \
      org.opencontainers.image.documentation="https://github.com/scopegate/scopegate/blob/main/helm/scopegate/README.md"
ENV PATH=/usr/local/bin
# gRPC (ext_authz, grpc.health.v1) and admin HTTP (/metrics, /healthz, /readyz, /status) when
# started with --listen 0.0.0.0:9191 --admin-listen 0.0.0.0:9192, as the Helm chart does.
EXPOSE 9191 9192
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["scopegate"]
CMD ["--help"]
