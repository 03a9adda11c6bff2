-- Users and their messages. Ids are AUTOINCREMENT so an id is never reused, even after deletes:
-- clients page with INBOX after_id and must never see an old id come back.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at_us INTEGER NOT NULL
);

CREATE TABLE messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sender           TEXT    NOT NULL,
    recipient        TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    created_at_us    INTEGER NOT NULL,
    client_timestamp TEXT
);

CREATE INDEX messages_by_recipient ON messages (recipient, id);
