# weft-control-plane (xDS, mesh CA, sidecar injector) and weftctl.
# Build from the repository root:
#   docker build -f docker/control-plane.Dockerfile -t weft/control-plane:0.1.0 .
# (or `buildah bud` / `podman build` with the same arguments).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p weft-control-plane \
 && install -D -m 0755 target/dist/weft-control-plane /out/weft-control-plane \
 && install -D -m 0755 target/dist/weftctl /out/weftctl

# A slim Debian with CA certificates and the two binaries, as UID 65532 (the chart's
# runAsUser); the root filesystem can be mounted read-only.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 weft \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin weft
COPY --from=build /out/weft-control-plane /out/weftctl /usr/local/bin/
USER 65532:65532
EXPOSE 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/weft-control-plane"]
