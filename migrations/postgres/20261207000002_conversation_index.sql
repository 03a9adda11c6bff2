-- Conversations (HISTORY <user>, GET /conversation) are read from both users' inboxes through
-- the recipient index, which now carries the sender too, so the sender is checked in the index
-- without reading the row. This replaces a second index on every message (sender, recipient,
-- id), whose upkeep cost a large share of durable SENDs (BENCHMARKS.md, "Rooms").
DROP INDEX messages_by_sender;
DROP INDEX messages_by_recipient;
CREATE INDEX messages_by_recipient ON messages (recipient, id) INCLUDE (sender);
