# pgchat in a container: built with cargo, run on Debian slim as a non-root user.
#   docker build -t pgchat .
#   docker run -e DATABASE_URL=postgres://… -e JWT_SECRET=… -p 3000:3000 pgchat
# docker-compose.yml starts it with PostgreSQL beside it; deploy/README.md has the rest.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# The dependencies first, in a layer of their own: a change to pgchat's sources then
# rebuilds pgchat alone. The stubs stand in for the sources until then.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
# The browser demo serves the JavaScript client from the binary (include_str!).
COPY clients/js/pgchat.js clients/js/pgchat.js
COPY migrations migrations
COPY schema.sql config.toml ./
# COPY keeps the files' own times, which may be older than the stubs' build: touch them
# so that cargo rebuilds pgchat itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/pgchat \
    && cp target/release/pgchat /usr/local/bin/pgchat

FROM debian:bookworm-slim
# ca-certificates: the system's roots for sslmode=verify-full to managed PostgreSQL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pgchat \
    && mkdir -p /app/data && chown pgchat:pgchat /app/data
COPY --from=build /usr/local/bin/pgchat /usr/local/bin/pgchat
COPY config.toml /app/config.toml
WORKDIR /app
USER pgchat
# Production behaviour unless told otherwise: JWT_SECRET required (32 bytes or more), no
# development sign-in, no private PostgreSQL, TLS to remote databases by default.
ENV PORT=3000 NO_COLOR=1 NODE_ENV=production
EXPOSE 3000
# SIGTERM drains: sockets close with 1001 and queued messages commit within
# shutdown_timeout_ms (10 s); give `docker stop` more than that (--time 15).
STOPSIGNAL SIGTERM
# /ready: the database answers and the notification listener is up. `pgchat health`
# asks 127.0.0.1:$PORT, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["pgchat", "health"]
ENTRYPOINT ["pgchat"]
CMD ["serve"]
