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
# Without debug symbols (the repository's release profile keeps some, for profiling): the
# image's binary is a third of the size.
RUN CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin chatd

FROM debian:bookworm-slim
RUN useradd --system --home-dir /data --create-home --uid 10001 chatd
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
USER chatd
WORKDIR /data
VOLUME /data
EXPOSE 8000 5000
ENV RUST_LOG=info
# Healthy when the line port greets a new connection with HELLO (bash's /dev/tcp: the slim
# image has no curl). A full server answers ERR SERVER_BUSY instead, and counts as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CHATD_PORT:-8000} && read -t 4 -r line <&3 && [[ $line == HELLO* ]]"]
# Inside the container 0.0.0.0 is right: only the ports published with -p are reachable.
ENTRYPOINT ["chatd"]
CMD ["serve", "--db", "sqlite:///data/chatd.db"]
