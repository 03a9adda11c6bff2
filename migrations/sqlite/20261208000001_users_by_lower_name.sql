-- The IRC door finds an account whatever the case of the nick a client typed (`ALICE` is
-- `alice` when no account is named `ALICE`), so names are indexed in lower case too.
CREATE INDEX users_by_lower_name ON users (lower(name));
