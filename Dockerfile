# syntax=docker/dockerfile:1
# The three services as static musl binaries in a FROM-scratch image.
#
#   docker build -t rust-eda .
#   docker buildx build --platform linux/amd64,linux/arm64 -t rust-eda .
#
# The build stage always runs on the build machine's own platform and
# cross-compiles to the target one with rust-lld (.cargo/config.toml): no C
# toolchain and no emulation, for either architecture.

FROM --platform=$BUILDPLATFORM rust:1.95-slim AS build
ARG TARGETARCH
WORKDIR /src
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture $TARGETARCH" >&2; exit 1 ;; \
    esac > /target \
 && rustup target add "$(cat /target)"
COPY . .
RUN CC=/bin/false CXX=/bin/false cargo build --release --locked --target "$(cat /target)" \
      --bin order-service --bin inventory-service --bin notification-service \
 && mkdir /out \
 && for s in order-service inventory-service notification-service; do \
      cp "target/$(cat /target)/release/$s" /out/; \
    done

FROM scratch
COPY --from=build /out/ /
COPY configs/stock.json /configs/stock.json
ENV APP_SERVER_HOST=0.0.0.0 \
    APP_INVENTORY_STOCK_FILE=/configs/stock.json
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/order-service"]
