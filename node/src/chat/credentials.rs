//! Passwords and session tokens.
//!
//! Passwords are hashed with Argon2id by the node that receives them, before any command
//! is formed: the plaintext never enters the log, the database or a log line. Session
//! tokens are 256 random bits shown once to the client; only their SHA-256 is stored, so
//! a copy of the database does not let anyone log in.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Cost of Argon2id hashing. Production uses the argon2 crate's defaults (19 MiB, 2 passes,
/// the OWASP recommendation); tests and simulations use the minimum, which is cheap. A
/// stored hash records its own cost, so hashes of different costs verify side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl PasswordHashCost {
    pub const DEFAULT: Self = Self { memory_kib: Params::DEFAULT_M_COST, iterations: Params::DEFAULT_T_COST };
    /// The least Argon2 allows: for tests and simulations only.
    pub const MINIMUM: Self = Self { memory_kib: Params::MIN_M_COST, iterations: Params::MIN_T_COST };
}

impl Default for PasswordHashCost {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The most memory a stored hash may ask for to be verified. Hashes this node makes use
/// [`PasswordHashCost`] (19 MiB by default); one asking for more than this was not made by
/// Chorus, and matches nothing rather than let one login allocate gigabytes.
const VERIFY_MEMORY_KIB_MAX: u32 = 256 * 1024;

/// Working memory for one Argon2 computation. It is reused from hash to hash: a burst of
/// logins then costs no allocation at all, instead of 19 MiB each that the allocator keeps
/// afterwards (seen: 200 concurrent sign-ups took a node from 11 MB to 3.6 GB, for good).
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    fn with_blocks(count: usize) -> Self {
        Self { blocks: vec![Block::default(); count] }
    }

    /// The first `count` blocks, growing (once) if a stored hash needs more than this node's
    /// own cost.
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::default());
        }
        &mut self.blocks[..count]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("password hash cost is out of range (memory {memory_kib} KiB, {iterations} iterations): {source}")]
    BadCost { memory_kib: u32, iterations: u32, source: argon2::Error },
    #[error("password hashing failed: {0}")]
    Hashing(#[from] argon2::Error),
    #[error("a password hash could not be encoded: {0}")]
    Encoding(#[from] argon2::password_hash::Error),
}

/// Hashes and verifies passwords at a fixed cost, in memory the caller provides.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A hash of a random password, verified against when the user does not exist so that
    /// an unknown name costs as much time as a wrong password (no user enumeration by timing).
    decoy_hash: String,
}

const SALT_BYTES: usize = 16;
const OUTPUT_BYTES: usize = Params::DEFAULT_OUTPUT_LEN;

impl PasswordHasher {
    pub fn new(cost: PasswordHashCost, rng: &mut impl RngCore) -> Result<Self, CredentialError> {
        let params = Params::new(cost.memory_kib, cost.iterations, Params::DEFAULT_P_COST, None).map_err(|source| {
            CredentialError::BadCost { memory_kib: cost.memory_kib, iterations: cost.iterations, source }
        })?;
        let mut hasher = Self { params, decoy_hash: String::new() };
        let mut decoy_password = [0u8; 32];
        rng.fill_bytes(&mut decoy_password);
        let mut memory = hasher.memory();
        hasher.decoy_hash = hasher.hash_bytes(&decoy_password, rng, &mut memory)?;
        Ok(hasher)
    }

    /// Working memory for this hasher's cost; keep it and pass it to every call.
    pub fn memory(&self) -> HashMemory {
        HashMemory::with_blocks(self.params.block_count())
    }

    /// Hashes a new password with a fresh salt; returns the PHC string to store.
    pub fn hash(
        &self,
        password: &str,
        rng: &mut impl RngCore,
        memory: &mut HashMemory,
    ) -> Result<String, CredentialError> {
        self.hash_bytes(password.as_bytes(), rng, memory)
    }

    fn hash_bytes(
        &self,
        password: &[u8],
        rng: &mut impl RngCore,
        memory: &mut HashMemory,
    ) -> Result<String, CredentialError> {
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        let mut output = [0u8; OUTPUT_BYTES];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        argon2.hash_password_into_with_memory(
            password,
            &salt,
            &mut output,
            memory.blocks(self.params.block_count()),
        )?;
        let salt = SaltString::encode_b64(&salt)?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params)?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&output)?),
        };
        Ok(hash.to_string())
    }

    /// True when `password` matches the stored PHC string. A stored hash that does not
    /// parse, is not Argon2, or asks for more than `VERIFY_MEMORY_KIB_MAX`, matches nothing.
    pub fn verify(&self, password: &str, stored_hash: &str, memory: &mut HashMemory) -> bool {
        let Ok(parsed) = PasswordHash::new(stored_hash) else { return false };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
        let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed)) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return false,
        };
        if params.m_cost() > VERIFY_MEMORY_KIB_MAX || expected.len() > OUTPUT_BYTES * 4 {
            return false;
        }
        let mut salt_bytes = [0u8; 64];
        let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else { return false };
        let mut output = vec![0u8; expected.len()];
        let blocks = params.block_count();
        let argon2 = Argon2::new(algorithm, version, params);
        if argon2
            .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut output, memory.blocks(blocks))
            .is_err()
        {
            return false;
        }
        // `Output`'s comparison takes the same time wherever the bytes differ.
        Output::new(&output).is_ok_and(|computed| computed == expected)
    }

    /// Spends the time of one verification and matches nothing: used when the named user
    /// does not exist.
    pub fn verify_decoy(&self, password: &str, memory: &mut HashMemory) -> bool {
        let _ = self.verify(password, &self.decoy_hash, memory);
        false
    }
}

/// Length of a session token's secret, in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// A fresh session token: 256 random bits as 64 lower-case hex characters.
pub fn new_session_token(rng: &mut impl RngCore) -> String {
    let mut secret = [0u8; TOKEN_BYTES];
    rng.fill_bytes(&mut secret);
    hex::encode(secret)
}

/// The SHA-256 of a token as the client presents it: what the database stores and what
/// commands carry.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn hash_verifies_only_the_same_password() {
        let mut rng = StdRng::seed_from_u64(7);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let memory = &mut hasher.memory();
        let stored = hasher.hash("correct horse", &mut rng, memory).unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert!(hasher.verify("correct horse", &stored, memory));
        assert!(!hasher.verify("correct horsf", &stored, memory));
        assert!(!hasher.verify("correct horse", "not a hash", memory));
        assert!(!hasher.verify_decoy("correct horse", memory));
    }

    /// Hashes made by the argon2 crate's own API (as every earlier Chorus stored them), and
    /// at another cost than this hasher's, verify; hashes asking for absurd memory do not.
    #[test]
    fn hashes_of_other_costs_and_makers_verify_in_the_same_memory() {
        use argon2::password_hash::PasswordHasher as _;
        let mut rng = StdRng::seed_from_u64(11);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let memory = &mut hasher.memory();
        let small = memory.bytes();
        let other = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(64, 2, 1, None).unwrap());
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let stored = other.hash_password(b"password1", &salt).unwrap().to_string();
        assert!(hasher.verify("password1", &stored, memory));
        assert!(!hasher.verify("password2", &stored, memory));
        assert!(memory.bytes() > small, "grew once for the larger cost");
        let greedy = stored.replace("m=64", "m=4194304");
        assert!(!hasher.verify("password1", &greedy, memory), "4 GiB is refused, not allocated");
    }

    #[test]
    fn same_password_gets_different_salts() {
        let mut rng = StdRng::seed_from_u64(8);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        let memory = &mut hasher.memory();
        assert_ne!(
            hasher.hash("password1", &mut rng, memory).unwrap(),
            hasher.hash("password1", &mut rng, memory).unwrap()
        );
    }

    #[test]
    fn tokens_are_256_bits_of_hex_and_hash_to_32_bytes() {
        let mut rng = StdRng::seed_from_u64(9);
        let token = new_session_token(&mut rng);
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token, new_session_token(&mut rng));
        assert_eq!(token_hash(&token).len(), 32);
    }

    #[test]
    fn bad_cost_is_reported() {
        let mut rng = StdRng::seed_from_u64(10);
        let cost = PasswordHashCost { memory_kib: 1, iterations: 1 };
        assert!(matches!(PasswordHasher::new(cost, &mut rng), Err(CredentialError::BadCost { .. })));
    }
}
