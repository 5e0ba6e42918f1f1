//! Syntactic checks of client input, shared by the server (before a command is formed) and
//! by the state machine (which re-checks every command it applies, so a malformed entry in
//! the log is rejected the same way on every replica instead of crashing them all).

use super::limits::{
    BODY_BYTES_MAX, DELETE_IDS_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, PASSWORD_BYTES_MAX, PASSWORD_BYTES_MIN,
    PATTERN_CHARS_MAX, REQUEST_ID_CHARS_MAX, USERNAME_CHARS_MAX,
};

/// Why a piece of client input is unacceptable. Messages say what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("username is empty: choose 1-32 characters of a-z, 0-9, '_', '.' and '-'")]
    UsernameEmpty,
    #[error("username is {len} characters long: at most {USERNAME_CHARS_MAX} are allowed")]
    UsernameTooLong { len: usize },
    #[error("username {name:?} contains {found:?}: only a-z, 0-9, '_', '.' and '-' are allowed")]
    UsernameBadCharacter { name: String, found: char },
    #[error("password is {len} bytes long: use at least {PASSWORD_BYTES_MIN}")]
    PasswordTooShort { len: usize },
    #[error("password is {len} bytes long: at most {PASSWORD_BYTES_MAX} are allowed")]
    PasswordTooLong { len: usize },
    #[error("message body is empty: send at least one character")]
    BodyEmpty,
    #[error("message body is {len} bytes: at most {BODY_BYTES_MAX} (64 KiB) are allowed")]
    BodyTooLong { len: usize },
    #[error(
        "sequence is 0: number the messages of a session 1, 2, 3, ... and reuse a message's number when you retry it, so that a retry is not stored twice"
    )]
    SequenceZero,
    #[error(
        "sequence ({sequence}) is too large: a session's messages are numbered from 1, and the server keeps numbers up to {SEQUENCE_MAX}"
    )]
    SequenceTooLarge { sequence: u64 },
    #[error(
        "acknowledged_through ({acknowledged_through}) must be below the message's sequence ({sequence}): it counts the sends whose answers you already have, and this one has none yet"
    )]
    AcknowledgedAhead { sequence: u64, acknowledged_through: u64 },
    #[error("request_id is {len} characters: at most {REQUEST_ID_CHARS_MAX} are allowed")]
    RequestIdTooLong { len: usize },
    #[error("request_id contains {found:?}: only printable ASCII without spaces is allowed")]
    RequestIdBadCharacter { found: char },
    #[error("pattern is {len} characters: at most {PATTERN_CHARS_MAX} are allowed")]
    PatternTooLong { len: usize },
    #[error(
        "pattern contains {found:?}: use username characters (a-z, 0-9, '_', '.', '-') and the wildcards '*' and '?'"
    )]
    PatternBadCharacter { found: char },
    #[error("page_token is not one this service issued: start again with an empty page_token")]
    PageTokenInvalid,
    #[error("no message ids given: name at least one message to delete")]
    NoMessageIds,
    #[error("{count} message ids given: delete at most {DELETE_IDS_MAX} at a time")]
    TooManyMessageIds { count: usize },
    #[error("message id 0 does not exist: message ids start at 1")]
    MessageIdZero,
    #[error("message id {id} does not exist: message ids are at most {}", i64::MAX)]
    MessageIdTooLarge { id: u64 },
}

/// Checks a username and returns its canonical form: ASCII upper case folded to lower case,
/// so that names are unique case-insensitively.
pub fn canonical_username(raw: &str) -> Result<String, InvalidInput> {
    if raw.is_empty() {
        return Err(InvalidInput::UsernameEmpty);
    }
    let len = raw.chars().count();
    if len > USERNAME_CHARS_MAX {
        return Err(InvalidInput::UsernameTooLong { len });
    }
    if let Some(found) = raw.chars().find(|c| !is_username_char(c.to_ascii_lowercase())) {
        return Err(InvalidInput::UsernameBadCharacter { name: raw.to_owned(), found });
    }
    Ok(raw.to_ascii_lowercase())
}

/// True for the characters a canonical username is made of.
pub fn is_username_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
}

/// Checks the length of a password chosen at account creation.
pub fn new_password(password: &str) -> Result<(), InvalidInput> {
    let len = password.len();
    if len < PASSWORD_BYTES_MIN {
        return Err(InvalidInput::PasswordTooShort { len });
    }
    if len > PASSWORD_BYTES_MAX {
        return Err(InvalidInput::PasswordTooLong { len });
    }
    Ok(())
}

/// Checks a password offered at login or account deletion. Only the upper bound matters:
/// it caps the hashing work a request can cause; a short one simply does not match.
pub fn offered_password(password: &str) -> Result<(), InvalidInput> {
    let len = password.len();
    if len > PASSWORD_BYTES_MAX {
        return Err(InvalidInput::PasswordTooLong { len });
    }
    Ok(())
}

pub fn message_body(body: &str) -> Result<(), InvalidInput> {
    if body.is_empty() {
        return Err(InvalidInput::BodyEmpty);
    }
    if body.len() > BODY_BYTES_MAX {
        return Err(InvalidInput::BodyTooLong { len: body.len() });
    }
    Ok(())
}

/// The largest send sequence: what SQLite's signed integers hold (above it, numbers
/// would be stored clamped, and two sends would share one record).
pub const SEQUENCE_MAX: u64 = i64::MAX as u64;

/// Checks a send's place in its session: a message number of at least 1, and an
/// acknowledgement of earlier sends only (see `SendMessageRequest` in chat.proto).
pub fn send_sequence(sequence: u64, acknowledged_through: u64) -> Result<(), InvalidInput> {
    if sequence == 0 {
        return Err(InvalidInput::SequenceZero);
    }
    if sequence > SEQUENCE_MAX {
        return Err(InvalidInput::SequenceTooLarge { sequence });
    }
    if acknowledged_through >= sequence {
        return Err(InvalidInput::AcknowledgedAhead { sequence, acknowledged_through });
    }
    Ok(())
}

/// Checks the optional id of a read (empty: none).
pub fn request_id(id: &str) -> Result<(), InvalidInput> {
    let len = id.chars().count();
    if len > REQUEST_ID_CHARS_MAX {
        return Err(InvalidInput::RequestIdTooLong { len });
    }
    if let Some(found) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(InvalidInput::RequestIdBadCharacter { found });
    }
    Ok(())
}

/// Checks an account-listing pattern and returns it as an SQLite GLOB pattern over
/// canonical names. Only username characters and the wildcards are allowed, so GLOB's
/// own `[...]` syntax can never appear and no escaping is needed.
pub fn account_pattern(raw: &str) -> Result<String, InvalidInput> {
    if raw.is_empty() {
        return Ok("*".to_owned());
    }
    let len = raw.chars().count();
    if len > PATTERN_CHARS_MAX {
        return Err(InvalidInput::PatternTooLong { len });
    }
    let pattern = raw.to_ascii_lowercase();
    if let Some(found) = pattern.chars().find(|&c| !is_username_char(c) && c != '*' && c != '?') {
        return Err(InvalidInput::PatternBadCharacter { found });
    }
    Ok(pattern)
}

/// A page size or limit from a request: 0 means the default, and values above the
/// maximum are served the maximum.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => PAGE_SIZE_DEFAULT,
        n => n.min(PAGE_SIZE_MAX),
    }
}

/// The largest number the chat database stores (SQLite integers are signed 64-bit): ids,
/// indices, sequences and times are all below it.
pub const SQL_INTEGER_MAX: u64 = i64::MAX as u64;

/// Checks the ids of a delete request and returns them sorted without repeats, so the
/// command's effect does not depend on the order or repetition the client chose.
pub fn message_ids(ids: &[u64]) -> Result<Vec<u64>, InvalidInput> {
    if ids.is_empty() {
        return Err(InvalidInput::NoMessageIds);
    }
    if ids.len() > DELETE_IDS_MAX {
        return Err(InvalidInput::TooManyMessageIds { count: ids.len() });
    }
    if let Some(&id) = ids.iter().find(|&&id| id > SQL_INTEGER_MAX) {
        return Err(InvalidInput::MessageIdTooLarge { id });
    }
    if ids.contains(&0) {
        return Err(InvalidInput::MessageIdZero);
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Ok(sorted)
}

/// Encodes the last name of a page as an opaque continuation token.
pub fn encode_page_token(last_username: &str) -> String {
    format!("p1.{}", hex::encode(last_username))
}

/// Decodes a token made by [`encode_page_token`]; `None` for the empty (first-page) token.
pub fn decode_page_token(token: &str) -> Result<Option<String>, InvalidInput> {
    if token.is_empty() {
        return Ok(None);
    }
    let hex = token.strip_prefix("p1.").ok_or(InvalidInput::PageTokenInvalid)?;
    if hex.len() > 2 * USERNAME_CHARS_MAX {
        return Err(InvalidInput::PageTokenInvalid);
    }
    let bytes = hex::decode(hex).map_err(|_| InvalidInput::PageTokenInvalid)?;
    let name = String::from_utf8(bytes).map_err(|_| InvalidInput::PageTokenInvalid)?;
    match canonical_username(&name) {
        Ok(canonical) if canonical == name => Ok(Some(name)),
        _ => Err(InvalidInput::PageTokenInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_fold_case_and_reject_other_characters() {
        assert_eq!(canonical_username("Bob_1.x-y").unwrap(), "bob_1.x-y");
        assert_eq!(canonical_username(""), Err(InvalidInput::UsernameEmpty));
        assert_eq!(canonical_username(&"a".repeat(33)), Err(InvalidInput::UsernameTooLong { len: 33 }));
        assert!(canonical_username(&"a".repeat(32)).is_ok());
        assert!(matches!(canonical_username("bob smith"), Err(InvalidInput::UsernameBadCharacter { found: ' ', .. })));
        assert!(matches!(canonical_username("zoë"), Err(InvalidInput::UsernameBadCharacter { found: 'ë', .. })));
    }

    #[test]
    fn password_bounds_are_in_bytes() {
        assert!(new_password("1234567").is_err());
        assert!(new_password("12345678").is_ok());
        assert!(new_password(&"x".repeat(1024)).is_ok());
        assert!(new_password(&"x".repeat(1025)).is_err());
        // Four 2-byte characters are 8 bytes.
        assert!(new_password("éééé").is_ok());
    }

    #[test]
    fn body_bounds() {
        assert_eq!(message_body(""), Err(InvalidInput::BodyEmpty));
        assert!(message_body(&"x".repeat(64 * 1024)).is_ok());
        assert_eq!(message_body(&"x".repeat(64 * 1024 + 1)), Err(InvalidInput::BodyTooLong { len: 65537 }));
    }

    #[test]
    fn send_sequences_start_at_one_and_acknowledge_only_earlier_sends() {
        assert_eq!(send_sequence(1, 0), Ok(()));
        assert_eq!(send_sequence(9, 8), Ok(()));
        assert_eq!(send_sequence(SEQUENCE_MAX, SEQUENCE_MAX - 1), Ok(()));
        assert_eq!(
            send_sequence(SEQUENCE_MAX + 1, 0),
            Err(InvalidInput::SequenceTooLarge { sequence: SEQUENCE_MAX + 1 })
        );
        assert_eq!(send_sequence(u64::MAX, u64::MAX - 1), Err(InvalidInput::SequenceTooLarge { sequence: u64::MAX }));
        assert_eq!(send_sequence(0, 0), Err(InvalidInput::SequenceZero));
        assert_eq!(send_sequence(5, 5), Err(InvalidInput::AcknowledgedAhead { sequence: 5, acknowledged_through: 5 }));
        assert!(send_sequence(5, 9).is_err());
    }

    #[test]
    fn patterns_allow_only_name_characters_and_wildcards() {
        assert_eq!(account_pattern("").unwrap(), "*");
        assert_eq!(account_pattern("B?b*").unwrap(), "b?b*");
        assert!(account_pattern("[a]").is_err());
        assert!(account_pattern("a b").is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = encode_page_token("alice.b");
        assert_eq!(decode_page_token(&token).unwrap().as_deref(), Some("alice.b"));
        assert_eq!(decode_page_token("").unwrap(), None);
        for forged in ["x", "p1.zz", "p1.4", "p1.41", "p1.2a2a"] {
            assert_eq!(decode_page_token(forged), Err(InvalidInput::PageTokenInvalid), "{forged}");
        }
    }

    #[test]
    fn message_ids_are_sorted_and_deduplicated() {
        assert_eq!(message_ids(&[3, 1, 3, 2]).unwrap(), vec![1, 2, 3]);
        assert_eq!(message_ids(&[]), Err(InvalidInput::NoMessageIds));
        assert_eq!(message_ids(&[0]), Err(InvalidInput::MessageIdZero));
        assert_eq!(message_ids(&[1, 1 << 63]), Err(InvalidInput::MessageIdTooLarge { id: 1 << 63 }));
        assert!(message_ids(&vec![1; 1001]).is_err());
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(5000), 1000);
    }
}
