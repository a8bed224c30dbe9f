# Builds every genq binary; the compose file picks one per service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/genq-api /src/target/release/genq-worker \
     /src/target/release/genq-provider-sim /src/target/release/genqctl /usr/local/bin/
USER nobody
