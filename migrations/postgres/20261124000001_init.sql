-- The PostgreSQL store: the same users, messages and tokens as the SQLite store, plus what
-- several chatd nodes need to share: which node stored a message (for catch-up after a lost
-- LISTEN connection), the live nodes and who is online on each.

-- The database's clock in microseconds since the epoch: one clock for every node.
CREATE FUNCTION db_now_us() RETURNS BIGINT LANGUAGE SQL VOLATILE
    AS $$ SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT $$;

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at_us BIGINT NOT NULL
);

CREATE TABLE messages (
    id               BIGSERIAL PRIMARY KEY,
    sender           TEXT   NOT NULL,
    recipient        TEXT   NOT NULL,
    body             TEXT   NOT NULL,
    -- The database's clock, so that nodes with skewed clocks agree.
    created_at_us    BIGINT NOT NULL DEFAULT db_now_us(),
    client_timestamp TEXT,
    node_id          TEXT   NOT NULL
);

CREATE INDEX messages_by_recipient ON messages (recipient, id);
-- Catch-up after a lost LISTEN connection reads each node's messages after the last one seen.
CREATE INDEX messages_by_node ON messages (node_id, id);

CREATE TABLE tokens (
    token_sha256  TEXT   PRIMARY KEY,
    user_name     TEXT   NOT NULL,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL
);

CREATE INDEX tokens_by_expiry ON tokens (expires_at_us);

-- A node is alive while its heartbeat is recent.
CREATE TABLE nodes (
    node_id      TEXT   PRIMARY KEY,
    heartbeat_us BIGINT NOT NULL,
    started_us   BIGINT NOT NULL
);

CREATE TABLE presence (
    node_id   TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    user_name TEXT NOT NULL,
    PRIMARY KEY (node_id, user_name)
);
