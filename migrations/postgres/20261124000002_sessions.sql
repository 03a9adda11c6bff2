-- Tokens are capped per user, the oldest ended first when a new one is issued: a user's tokens
-- in the order they were issued.
CREATE INDEX tokens_by_user ON tokens (user_name, created_at_us);

-- "Log out everywhere": when each user last did it, by the database's clock. Every node reads
-- the recent rows and ends that user's sessions it holds that began before then. One row per
-- user, so the table never grows beyond the users; old rows are removed as new ones come.
CREATE TABLE logouts (
    user_name TEXT   PRIMARY KEY,
    at_us     BIGINT NOT NULL
);

CREATE INDEX logouts_by_time ON logouts (at_us);
