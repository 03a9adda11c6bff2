-- Bearer tokens issued by the HTTP facade's /auth. Only a SHA-256 of each token is kept, so a
-- copy of the database does not hand out logins.
CREATE TABLE tokens (
    token_sha256  TEXT    PRIMARY KEY,
    user_name     TEXT    NOT NULL,
    created_at_us INTEGER NOT NULL,
    expires_at_us INTEGER NOT NULL
);

CREATE INDEX tokens_by_expiry ON tokens (expires_at_us);
