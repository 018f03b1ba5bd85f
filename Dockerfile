# Build: docker build -t push-to-k8s:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin push-to-k8s

FROM debian:bookworm-slim
COPY --from=build /src/target/release/push-to-k8s /usr/local/bin/push-to-k8s
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/push-to-k8s"]
