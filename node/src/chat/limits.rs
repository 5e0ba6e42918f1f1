//! Named bounds on every input and every per-user collection of the chat service.

/// Longest username, in characters (all ASCII, so also bytes).
pub const USERNAME_CHARS_MAX: usize = 32;
/// Shortest accepted password, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
/// Longest accepted password, in bytes; bounds the work of hashing one.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Largest message body, in bytes of UTF-8.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Longest client-chosen read request id, in characters.
pub const REQUEST_ID_CHARS_MAX: usize = 64;
/// Most sends per session whose answers the client has not acknowledged yet. Each is
/// remembered (so that a retry gets the first answer) until the client acknowledges it;
/// beyond this a new send is refused until it does, which bounds the dedup state per session.
pub const SENDS_UNACKNOWLEDGED_PER_SESSION_MAX: u64 = 1024;
/// Longest account-listing pattern, in characters.
pub const PATTERN_CHARS_MAX: usize = 64;
/// Most bytes of messages in one page (ReadMessages, History, one fetch of a subscription),
/// counted by `MessageView::page_bytes`, which is at least a message's encoded size: a page
/// stops before it would pass this, so its reply stays under [`REPLY_BYTES_MAX`] however
/// large the messages. Decided inside apply for ReadMessages, so every replica cuts a read
/// at the same message.
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// Largest request a node decodes: the largest valid one (a 64 KiB message body, or a
/// thousand ids to delete) with room to spare. Anything bigger is refused before it is
/// decoded, so a request cannot make a node hold more than this per call in flight.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;
/// Largest reply a node sends, encoded. Clients accept 4 MiB (tonic's default, which the
/// client library sets explicitly); a node stays at half of it.
pub const REPLY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Page size or read limit used when the request leaves it at 0.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
/// Largest page size or read limit; larger requests are served this many (AIP-158 style).
pub const PAGE_SIZE_MAX: u32 = 1000;
/// Most message ids one DeleteMessages request may name.
pub const DELETE_IDS_MAX: usize = 1000;
/// How long a session lasts when the command that opened it says nothing (one written
/// before sessions expired): a week, the default lifetime.
pub const SESSION_LIFETIME_LEGACY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Most open sessions per account; opening one more closes the oldest, so logins that
/// never log out cannot grow the session table without bound.
pub const SESSIONS_PER_USER_MAX: u64 = 64;
/// Longest session token accepted on the wire, in bytes; real tokens are 64 hex characters.
pub const TOKEN_BYTES_MAX: usize = 128;
