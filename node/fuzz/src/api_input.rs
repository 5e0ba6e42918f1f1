//! Target `api_input`: the syntactic checks every client-supplied field passes before a
//! command is formed (and again inside apply): names, passwords, bodies, patterns, page
//! tokens, read ids, sequences, page sizes and message ids.
//!
//! Properties: nothing panics; every refusal says what to do; what a check accepts is
//! within its documented bounds and is a fixed point of the check (a canonical name is
//! its own canonical form; a page token decodes to the name it was made from).
//!
//! Input: six `u64`s (the fourth also counts the message ids), then the rest as text
//! (lossily made UTF-8 when it is not).

use chorus::chat::limits::{DELETE_IDS_MAX, PAGE_SIZE_MAX, USERNAME_CHARS_MAX};
use chorus::chat::validate::{self, InvalidInput};

use crate::input::Input;

fn refusal_says_why(error: &InvalidInput) {
    assert!(error.to_string().len() > 10, "a refusal without a reason: {error:?}");
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let numbers: Vec<u64> = (0..6).map(|_| input.u64()).collect();
    let rest = input.bytes(usize::MAX);
    let text = String::from_utf8_lossy(rest);

    match validate::canonical_username(&text) {
        Ok(name) => {
            assert!(!name.is_empty() && name.chars().count() <= USERNAME_CHARS_MAX, "accepted name {name:?}");
            assert!(name.chars().all(validate::is_username_char), "accepted name {name:?}");
            assert_eq!(validate::canonical_username(&name).as_ref(), Ok(&name), "a canonical name changed");
            let token = validate::encode_page_token(&name);
            assert_eq!(validate::decode_page_token(&token), Ok(Some(name)), "a page token lost its name");
        }
        Err(error) => refusal_says_why(&error),
    }
    match validate::account_pattern(&text) {
        Ok(pattern) => assert_eq!(validate::account_pattern(&pattern).as_ref(), Ok(&pattern), "a pattern changed"),
        Err(error) => refusal_says_why(&error),
    }
    match validate::decode_page_token(&text) {
        Ok(Some(name)) => {
            assert!(name.chars().count() <= USERNAME_CHARS_MAX, "a page token decoded to {name:?}");
        }
        Ok(None) => assert!(text.is_empty(), "a non-empty page token decoded to the first page"),
        Err(error) => refusal_says_why(&error),
    }
    for check in [validate::new_password, validate::offered_password, validate::message_body, validate::request_id] {
        if let Err(error) = check(&text) {
            refusal_says_why(&error);
        }
    }

    let [a, b, c, ..] = numbers[..] else { unreachable!("six numbers were read") };
    match validate::send_sequence(a, b) {
        Ok(()) => assert!(a >= 1 && b < a && a <= validate::SEQUENCE_MAX, "accepted sequence {a} after {b}"),
        Err(error) => refusal_says_why(&error),
    }
    let size = validate::page_size(c as u32);
    assert!((1..=PAGE_SIZE_MAX).contains(&size), "page size {size} for {c}");

    // Message ids: the numbers, repeated up to the selector's count (to cross the limit).
    let count = usize::from(numbers[3] as u16) % (2 * DELETE_IDS_MAX);
    let ids: Vec<u64> = numbers.iter().copied().cycle().take(count).collect();
    match validate::message_ids(&ids) {
        Ok(sorted) => {
            assert!(!sorted.is_empty() && sorted.len() <= DELETE_IDS_MAX, "accepted {} ids", sorted.len());
            assert!(sorted.windows(2).all(|pair| pair[0] < pair[1]), "ids not sorted without repeats");
            assert!(sorted.iter().all(|&id| (1..=validate::SQL_INTEGER_MAX).contains(&id)), "accepted {sorted:?}");
            assert!(sorted.iter().all(|id| ids.contains(id)), "ids that were not asked for");
        }
        Err(error) => refusal_says_why(&error),
    }
}
