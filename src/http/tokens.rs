//! Bearer tokens for the HTTP facade: issued by `/auth`, ended by `/logout` or after
//! [`TOKEN_LIFETIME`]. The store keeps only a SHA-256 of each token. Each node remembers tokens
//! it has seen valid for at most [`RECHECK`], then asks the store again: a token revoked or
//! removed on any node is refused everywhere within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::chat::Username;
use crate::error::{ChatError, ChatResult, Code};
use crate::store::Store;

/// How long a token from `/auth` stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a node trusts its memory of a valid token before asking the store again.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Tokens remembered at most (beyond that the memory is emptied and refilled from the store).
const MAX_REMEMBERED: usize = 100_000;

pub struct Tokens {
    store: Store,
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
}

#[derive(Clone)]
struct Remembered {
    user: Username,
    /// µs since the epoch.
    expires_at_us: i64,
    checked: Instant,
}

impl Tokens {
    pub fn new(store: Store) -> Tokens {
        Tokens {
            store,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    /// A new token for `user`, and its lifetime.
    pub async fn issue(&self, user: &Username) -> ChatResult<(String, Duration)> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = hex(&raw);
        let digest = digest(&token);
        let expires_at_us = now_us() + TOKEN_LIFETIME.as_micros() as i64;
        self.store
            .create_token(&hex(&digest), user.as_str(), expires_at_us)
            .await?;
        self.remember(digest, user.clone(), expires_at_us);
        Ok((token, TOKEN_LIFETIME))
    }

    /// The user a token belongs to; `BAD_CREDENTIALS` if it is unknown, revoked or expired.
    pub async fn user(&self, token: &str) -> ChatResult<Username> {
        if token.len() != 64 {
            return Err(refused());
        }
        let digest = digest(token);
        let known = self.lock().get(&digest).cloned();
        if let Some(known) = known.filter(|k| k.checked.elapsed() < RECHECK) {
            return if known.expires_at_us > now_us() {
                Ok(known.user)
            } else {
                Err(refused())
            };
        }
        match self.store.token_user(&hex(&digest)).await? {
            Some((user, expires_at_us)) => {
                let user = Username::parse(&user)?;
                self.remember(digest, user.clone(), expires_at_us);
                Ok(user)
            }
            None => {
                self.lock().remove(&digest);
                Err(refused())
            }
        }
    }

    /// Ends `token` on every node (on others within [`RECHECK`]); the user it belonged to.
    pub async fn revoke(&self, token: &str) -> ChatResult<Username> {
        let user = self.user(token).await?;
        let digest = digest(token);
        self.store.revoke_token(&hex(&digest)).await?;
        self.lock().remove(&digest);
        Ok(user)
    }

    fn remember(&self, digest: [u8; 32], user: Username, expires_at_us: i64) {
        let mut remembered = self.lock();
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, r| r.checked.elapsed() < RECHECK);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(
            digest,
            Remembered {
                user,
                expires_at_us,
                checked: Instant::now(),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Remembered>> {
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn refused() -> ChatError {
    ChatError::new(
        Code::BadCredentials,
        "the token is unknown, revoked or has expired; log in again",
    )
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
