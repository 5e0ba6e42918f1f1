//! The chat database's schema, one migration per version (see `docs/design.md`).
//!
//! Every index exists for one query, named beside it, so that mailbox reads, history pages
//! and account listings cost O(log n + page) however large the tables grow.

/// `MIGRATIONS[v]` upgrades schema version `v` to `v + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

const V1: &str = "
-- One row: how far the log has been applied, and the id counters. Ids come from counters
-- advanced by apply, so every replica assigns the same ids in log order.
CREATE TABLE chat_state (
    singleton       INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_applied    INTEGER NOT NULL,
    next_user_id    INTEGER NOT NULL,
    next_message_id INTEGER NOT NULL
);
INSERT INTO chat_state VALUES (1, 0, 1, 1);

-- Accounts. A deleted account keeps its row as a tombstone (no password, deleted_at_ms set)
-- so its name is never handed to someone else and old messages still show who sent them.
CREATE TABLE users (
    user_id       INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,  -- canonical lower case; the index serves listing
    password_hash TEXT,                     -- Argon2id PHC string; NULL once deleted
    created_at_ms INTEGER NOT NULL,
    deleted_at_ms INTEGER,
    unread_count  INTEGER NOT NULL DEFAULT 0 CHECK (unread_count >= 0)
);

-- Sessions, keyed by the SHA-256 of the token. opened_index (the log index of the login)
-- orders a user's sessions so the oldest can be closed deterministically.
CREATE TABLE sessions (
    token_hash   BLOB    PRIMARY KEY,
    user_id      INTEGER NOT NULL,
    opened_index INTEGER NOT NULL,
    opened_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_user ON sessions (user_id, opened_index);

-- Messages. A message is one row shared by sender and recipient; deleting it removes it
-- for both. pair_low/pair_high are the two participants' ids in order, so one index
-- range holds a whole conversation.
CREATE TABLE messages (
    message_id   INTEGER PRIMARY KEY,
    sender_id    INTEGER NOT NULL,
    recipient_id INTEGER NOT NULL,
    pair_low     INTEGER NOT NULL,
    pair_high    INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    sent_at_ms   INTEGER NOT NULL,
    read_at_ms   INTEGER
);
CREATE INDEX messages_by_recipient ON messages (recipient_id, message_id);  -- history, subscribe
CREATE INDEX messages_by_sender ON messages (sender_id, message_id);        -- history
CREATE INDEX messages_by_pair ON messages (pair_low, pair_high, message_id);  -- history with a peer
CREATE INDEX messages_unread ON messages (recipient_id, message_id) WHERE read_at_ms IS NULL;  -- read

-- Idempotent sends: the first message stored for (sender, client_msg_id). Kept after the
-- message is deleted, so a late retry still does not store a second copy. request_digest
-- is the SHA-256 of the recipient and body, to tell a retry from a reused id.
CREATE TABLE sent_dedup (
    sender_id      INTEGER NOT NULL,
    client_msg_id  TEXT    NOT NULL,
    message_id     INTEGER NOT NULL,
    request_digest BLOB    NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
) WITHOUT ROWID;
";

/// Bounded deduplication: each record keeps the first-attempt time carried by its
/// client_msg_id; per sender, `dedup_floor_ms` is the newest time ever forgotten, and a
/// send whose id is not remembered but is not newer than the floor is refused.
const V2: &str = "
CREATE TABLE sent_dedup_v2 (
    sender_id        INTEGER NOT NULL,
    client_msg_id    TEXT    NOT NULL,
    message_id       INTEGER NOT NULL,
    request_digest   BLOB    NOT NULL,
    first_attempt_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
) WITHOUT ROWID;
-- Version 1 ids carried no time; their send time stands in for it.
INSERT INTO sent_dedup_v2 SELECT sender_id, client_msg_id, message_id, request_digest, sent_at_ms FROM sent_dedup;
DROP TABLE sent_dedup;
ALTER TABLE sent_dedup_v2 RENAME TO sent_dedup;
CREATE INDEX sent_dedup_by_age ON sent_dedup (sender_id, first_attempt_ms);  -- forgetting the oldest

ALTER TABLE users ADD COLUMN dedup_floor_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN dedup_records INTEGER NOT NULL DEFAULT 0 CHECK (dedup_records >= 0);
UPDATE users SET dedup_records = (SELECT count(*) FROM sent_dedup WHERE sender_id = users.user_id);
";

/// Retry-safe reads: each session remembers its last read's request id and the ids it
/// returned (big-endian u64s), so that a retry returns the same batch.
const V3: &str = "
ALTER TABLE sessions ADD COLUMN last_read_request_id TEXT;
ALTER TABLE sessions ADD COLUMN last_read_ids BLOB;
";

/// Exactly-once sends without clocks (the Raft dissertation's client sessions, §6.3): each
/// session numbers its messages, and a send is remembered (its message id, and a digest of
/// what it asked for) until the client acknowledges its answer. The clock-based records of
/// versions 2 and 3 cannot answer sequence-numbered retries and are dropped.
const V4: &str = "
CREATE TABLE session_sends (
    token_hash     BLOB    NOT NULL,
    sequence       INTEGER NOT NULL,
    message_id     INTEGER NOT NULL,
    request_digest BLOB    NOT NULL,
    PRIMARY KEY (token_hash, sequence)  -- retry detection; forgetting what was acknowledged
) WITHOUT ROWID;
ALTER TABLE sessions ADD COLUMN sends_acknowledged_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN sends_remembered INTEGER NOT NULL DEFAULT 0 CHECK (sends_remembered >= 0);
DROP TABLE sent_dedup;
ALTER TABLE users DROP COLUMN dedup_floor_ms;
ALTER TABLE users DROP COLUMN dedup_records;
";

/// Sessions that expire, by log time: `chat_state.log_time_ms` is the latest proposal time
/// any applied command carried (never going back), and a session is live while its
/// `expires_at_ms` is ahead of it. Sessions opened before this version end a week after
/// they opened (the default lifetime).
const V5: &str = "
ALTER TABLE chat_state ADD COLUMN log_time_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN expires_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET expires_at_ms = min(opened_at_ms, 9223372036854775807 - 604800000) + 604800000;
";
