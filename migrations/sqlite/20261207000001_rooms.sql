-- Rooms (issue 16). A room's messages and events are rows of `messages` whose recipient is the
-- room's name (`#` first, as first created): each room is one stream, stored once, however many
-- members read it. An event row has a kind (join, leave, kick, topic, mode) and a subject.
ALTER TABLE messages ADD COLUMN kind TEXT;
ALTER TABLE messages ADD COLUMN subject TEXT;

CREATE TABLE rooms (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The name in lower case: names are case-insensitive.
    name_key      TEXT    NOT NULL UNIQUE,
    -- The name as first created, as it is shown.
    name          TEXT    NOT NULL,
    topic         TEXT    NOT NULL DEFAULT '',
    invite_only   INTEGER NOT NULL DEFAULT 0,
    moderated     INTEGER NOT NULL DEFAULT 0,
    topic_locked  INTEGER NOT NULL DEFAULT 1,
    created_at_us INTEGER NOT NULL
);

-- Membership persists while the member is offline. `read_id` is the member's read mark: the
-- unread are the room's messages after it.
CREATE TABLE room_members (
    room_id      INTEGER NOT NULL REFERENCES rooms (id),
    user_name    TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    joined_at_us INTEGER NOT NULL,
    read_id      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_name)
) WITHOUT ROWID;

CREATE INDEX room_members_by_user ON room_members (user_name, room_id);

CREATE TABLE room_invites (
    room_id   INTEGER NOT NULL REFERENCES rooms (id),
    user_name TEXT    NOT NULL,
    PRIMARY KEY (room_id, user_name)
) WITHOUT ROWID;

-- HISTORY <user>: one side of a direct conversation by sender.
CREATE INDEX messages_by_sender ON messages (sender, recipient, id);
