-- Tokens are capped per user, the oldest ended first when a new one is issued: a user's tokens
-- in the order they were issued.
CREATE INDEX tokens_by_user ON tokens (user_name, created_at_us);
