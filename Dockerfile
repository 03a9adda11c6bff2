# chatd in a container.
#
#   docker build -t chatd .
#   docker run --rm -p 8000:8000 -p 5000:5000 -v chatd-data:/data chatd
#
# The database is /data/chatd.db on the volume; flags go after the image name
# (`docker run ... chatd serve --echo-port 7`) or as CHATD_* variables (`-e CHATD_DB=postgres://...`).
# chatd handles SIGTERM itself, so `docker stop` gives every client BYE and exits 0.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin chatd

FROM debian:bookworm-slim
RUN useradd --system --home-dir /data --create-home --uid 10001 chatd
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
WORKDIR /data
VOLUME /data
EXPOSE 8000 5000
ENV RUST_LOG=info
# Inside the container 0.0.0.0 is right: only the ports published with -p are reachable.
ENTRYPOINT ["chatd"]
CMD ["serve", "--db", "sqlite:///data/chatd.db"]
