# weft-proxy: the sidecar, and `weft-proxy init` (the capture init container) in the same image.
# Build from the repository root:
#   docker build -f docker/proxy.Dockerfile -t weft/proxy:0.1.0 .
# (or `buildah bud` / `podman build` with the same arguments).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p weft-proxy \
 && install -D -m 0755 target/dist/weft-proxy /out/weft-proxy

# The runtime needs iptables (nft and legacy backends) for `weft-proxy init`, and nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 2102 weft-proxy \
 && useradd --uid 2102 --gid 2102 --no-create-home --shell /usr/sbin/nologin weft-proxy
COPY --from=build /out/weft-proxy /usr/local/bin/weft-proxy
# UID 2102: the capture rules let this user's traffic through unredirected. The injector sets
# the same user in the pod; `weft-proxy init` runs as root with NET_ADMIN and NET_RAW only.
USER 2102:2102
EXPOSE 15001 15006 15020
ENTRYPOINT ["/usr/local/bin/weft-proxy"]
