//! Passwords and session tokens.
//!
//! Passwords are hashed with Argon2id by the node that receives them, before any command
//! is formed: the plaintext never enters the log, the database or a log line. Session
//! tokens are 256 random bits shown once to the client; only their SHA-256 is stored, so
//! a copy of the database does not let anyone log in.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("password hash cost is out of range (memory {memory_kib} KiB, {iterations} iterations): {reason}")]
    BadCost { memory_kib: u32, iterations: u32, reason: String },
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Hashes and verifies passwords at a fixed cost.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// A hash of a random password, verified against when the user does not exist so that
    /// an unknown name costs as much time as a wrong password (no user enumeration by timing).
    decoy_hash: String,
}

const SALT_BYTES: usize = 16;

impl PasswordHasher {
    pub fn new(cost: PasswordHashCost, rng: &mut impl RngCore) -> Result<Self, CredentialError> {
        let params = Params::new(cost.memory_kib, cost.iterations, Params::DEFAULT_P_COST, None).map_err(|e| {
            CredentialError::BadCost { memory_kib: cost.memory_kib, iterations: cost.iterations, reason: e.to_string() }
        })?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut hasher = Self { argon2, decoy_hash: String::new() };
        let mut decoy_password = [0u8; 32];
        rng.fill_bytes(&mut decoy_password);
        hasher.decoy_hash = hasher.hash_bytes(&decoy_password, rng)?;
        Ok(hasher)
    }

    /// Hashes a new password with a fresh salt; returns the PHC string to store.
    pub fn hash(&self, password: &str, rng: &mut impl RngCore) -> Result<String, CredentialError> {
        self.hash_bytes(password.as_bytes(), rng)
    }

    fn hash_bytes(&self, password: &[u8], rng: &mut impl RngCore) -> Result<String, CredentialError> {
        let mut salt = [0u8; SALT_BYTES];
        rng.fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| CredentialError::Hashing(e.to_string()))?;
        let hash = self.argon2.hash_password(password, &salt).map_err(|e| CredentialError::Hashing(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// True when `password` matches the stored PHC string. A stored hash that does not
    /// parse matches nothing.
    pub fn verify(&self, password: &str, stored_hash: &str) -> bool {
        match PasswordHash::new(stored_hash) {
            Ok(parsed) => self.argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    }

    /// Spends the time of one verification and matches nothing: used when the named user
    /// does not exist.
    pub fn verify_decoy(&self, password: &str) -> bool {
        let _ = self.verify(password, &self.decoy_hash);
        false
    }
}

/// Length of a session token's secret, in bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// A fresh session token: 256 random bits as 64 lower-case hex characters.
pub fn new_session_token(rng: &mut impl RngCore) -> String {
    let mut secret = [0u8; TOKEN_BYTES];
    rng.fill_bytes(&mut secret);
    secret.iter().map(|byte| format!("{byte:02x}")).collect()
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
        let stored = hasher.hash("correct horse", &mut rng).unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(!stored.contains("correct horse"));
        assert!(hasher.verify("correct horse", &stored));
        assert!(!hasher.verify("correct horsf", &stored));
        assert!(!hasher.verify("correct horse", "not a hash"));
        assert!(!hasher.verify_decoy("correct horse"));
    }

    #[test]
    fn same_password_gets_different_salts() {
        let mut rng = StdRng::seed_from_u64(8);
        let hasher = PasswordHasher::new(PasswordHashCost::MINIMUM, &mut rng).unwrap();
        assert_ne!(hasher.hash("password1", &mut rng).unwrap(), hasher.hash("password1", &mut rng).unwrap());
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
