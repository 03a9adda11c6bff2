//! Bearer tokens from `/auth`: issued at random, stored only as their SHA-256, and remembered
//! per node so checking one costs no query.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};

use super::names::Username;
use crate::error::{ChatError, ChatResult, Code};
use crate::store::Store;

/// How long a bearer token from `/auth` stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Tokens remembered per node at most.
const CACHED_TOKENS: usize = 100_000;

#[derive(Default)]
pub(crate) struct Tokens {
    cache: Mutex<HashMap<[u8; 32], (Username, i64)>>,
}

impl Tokens {
    /// Issues a token for an authenticated user; returns it and its lifetime.
    pub async fn issue(&self, store: &Store, user: &Username) -> ChatResult<(String, Duration)> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = hex(&raw);
        let digest = token_digest(&token);
        let expires = chrono::Utc::now().timestamp_micros() + TOKEN_LIFETIME.as_micros() as i64;
        store.create_token(&hex(&digest), user.as_str(), expires).await?;
        self.remember(digest, user.clone(), expires);
        Ok((token, TOKEN_LIFETIME))
    }

    /// The user a token belongs to; `BAD_CREDENTIALS` if it is unknown or expired.
    pub async fn user(&self, store: &Store, token: &str) -> ChatResult<Username> {
        let bad = || {
            ChatError::new(
                Code::BadCredentials,
                "the token is unknown or has expired; log in again",
            )
        };
        if token.len() != 64 {
            return Err(bad());
        }
        let digest = token_digest(token);
        let now = chrono::Utc::now().timestamp_micros();
        let cached = self.lock().get(&digest).cloned();
        if let Some((user, expires)) = cached {
            return if expires > now { Ok(user) } else { Err(bad()) };
        }
        let (user, expires) = store.token_user(&hex(&digest)).await?.ok_or_else(bad)?;
        let user = Username::parse(&user)?;
        self.remember(digest, user.clone(), expires);
        Ok(user)
    }

    fn remember(&self, digest: [u8; 32], user: Username, expires: i64) {
        let mut tokens = self.lock();
        if tokens.len() >= CACHED_TOKENS {
            let now = chrono::Utc::now().timestamp_micros();
            tokens.retain(|_, (_, e)| *e > now);
            if tokens.len() >= CACHED_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(digest, (user, expires));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Username, i64)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
