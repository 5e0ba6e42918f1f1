//! Named bounds on every input and every per-user collection of the chat service.

/// Longest username, in characters (all ASCII, so also bytes).
pub const USERNAME_LEN_MAX: usize = 32;
/// Shortest accepted password, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest accepted password, in bytes; bounds the work of hashing one.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Largest message body, in bytes of UTF-8.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest client-chosen message id, in characters.
pub const CLIENT_MSG_ID_LEN_MAX: usize = 64;
/// How long (in log time) a sender's client_msg_ids are remembered for deduplication.
pub const DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Most client_msg_ids remembered per sender; beyond it the oldest are forgotten.
pub const DEDUP_RECORDS_PER_SENDER_MAX: u64 = 10_000;
/// How far ahead of the server's clock a client_msg_id's time may be (client clock skew).
pub const CLIENT_CLOCK_AHEAD_MAX_MS: u64 = 5 * 60 * 1000;
/// Longest account-listing pattern, in characters.
pub const PATTERN_LEN_MAX: usize = 64;
/// Page size or read limit used when the request leaves it at 0.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
/// Largest page size or read limit; larger requests are served this many (AIP-158 style).
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Most message ids one DeleteMessages request may name.
pub const DELETE_IDS_MAX: usize = 1000;
/// Most open sessions per account; opening one more closes the oldest, so logins that
/// never log out cannot grow the session table without bound.
pub const SESSIONS_PER_USER_MAX: u64 = 64;
/// Longest session token accepted on the wire; real tokens are 64 hex characters.
pub const TOKEN_LEN_MAX: usize = 128;
