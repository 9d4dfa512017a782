# Builds the project's binaries (producer, dispatcher, schema-registry, examples) into one small image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p producer -p schema-registry -p dispatcher -p consumer-examples --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/producer /src/target/release/schema-registry \
     /src/target/release/dispatcher /src/target/release/partner-receiver /src/target/release/orders-tail /usr/local/bin/
COPY config /etc/orderhooks
USER 65534
ENTRYPOINT []
