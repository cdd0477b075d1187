# The proxy-agent image: proxy-agent and proxyctl on Debian bookworm, with the iptables
# and conntrack tools the iptables mode drives. Build it from the repository root:
#
#   docker build -t ghcr.io/ebpf-proxy/ebpf-proxy:0.1.0 .
#
# deploy/base/daemonset.yaml runs this image. The BPF object is built by proxy-user's build
# script and embedded in proxy-agent, so the runtime stage needs no compiler or LLVM.

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl build-essential pkg-config git \
 && rm -rf /var/lib/apt/lists/*
RUN curl https://sh.rustup.rs -sSf | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# What a build needs and nothing of the host: Debian's LLVM 22 packages, nightly with
# rust-src (the BPF crate is built with -Z build-std=core) and bpf-linker against LLVM 22.
RUN cargo xtask setup --build-only
RUN cargo build --release --locked -p proxy-user --bins

FROM debian:bookworm-slim
# iptables: both backends (iptables-nft-* and iptables-legacy-*), for --mode iptables and
# --mode auto's fallback, and for --cleanup-kube-proxy. conntrack: UDP entries of removed
# endpoints are deleted with it, as kube-proxy does.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/proxy-agent /src/target/release/proxyctl /usr/local/bin/
LABEL org.opencontainers.image.title="ebpf-proxy" \
      org.opencontainers.image.description="Kubernetes service proxy built on eBPF that replaces kube-proxy (proxy-agent, proxyctl)" \
      org.opencontainers.image.source="https://github.com/ebpf-proxy/ebpf-proxy" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/proxy-agent"]
