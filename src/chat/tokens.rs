//! Bearer tokens for the HTTP facade: issued by `/auth`, ended by `/logout`, by a "log out
//! everywhere", by newer tokens past the cap per user, or after [`TOKEN_LIFETIME`]. The store
//! keeps only a SHA-256 of each token. Each node remembers tokens it has seen valid for at most
//! [`RECHECK`], then asks the store again: a token revoked or removed on any node is refused
//! everywhere within that time. (What a token opened ends with it: see [`super::sessions`].)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};

use crate::chat::Username;
use crate::error::{ChatError, ChatResult, Code};
use crate::hub::TokenId;
use crate::store::Store;

/// How long a token from `/auth` stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a node trusts its memory of a valid token before asking the store again.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Tokens remembered at most (beyond that the memory is emptied and refilled from the store).
const MAX_REMEMBERED: usize = 100_000;

/// Most live tokens one user may have, by default; issuing another ends the oldest.
pub const MAX_TOKENS_PER_USER: usize = 100;

/// A cheap handle: the domain and the HTTP facade share one memory of tokens.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    remembered: Mutex<HashMap<TokenId, Remembered>>,
    max_per_user: usize,
}

/// A token just issued.
pub struct Issued {
    pub token: String,
    pub lifetime: Duration,
    /// The user's oldest tokens, ended to keep within the cap.
    pub ended: Vec<TokenId>,
}

#[derive(Clone)]
struct Remembered {
    user: Username,
    /// µs since the epoch.
    expires_at_us: i64,
    checked: Instant,
}

impl Tokens {
    pub fn new(store: Store, max_per_user: usize) -> Tokens {
        Tokens {
            inner: Arc::new(Inner {
                store,
                remembered: Mutex::new(HashMap::new()),
                max_per_user: max_per_user.max(1),
            }),
        }
    }

    /// A new token for `user`; the store ends the user's oldest ones beyond the cap, and this
    /// node forgets them at once.
    pub async fn issue(&self, user: &Username) -> ChatResult<Issued> {
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = hex(&raw);
        let digest = digest(&token);
        let expires_at_us = now_us() + TOKEN_LIFETIME.as_micros() as i64;
        let ended = self
            .inner
            .store
            .create_token(
                &hex(&digest),
                user.as_str(),
                expires_at_us,
                self.inner.max_per_user,
            )
            .await?;
        let ended: Vec<TokenId> = ended.iter().filter_map(|h| unhex(h)).collect();
        self.forget(&ended);
        self.remember(digest, user.clone(), expires_at_us);
        Ok(Issued {
            token,
            lifetime: TOKEN_LIFETIME,
            ended,
        })
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
        match self.inner.store.token_user(&hex(&digest)).await? {
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

    /// Ends `token` on every node (on others within [`RECHECK`]); the user it belonged to,
    /// and what identifies it.
    pub async fn revoke(&self, token: &str) -> ChatResult<(Username, TokenId)> {
        let user = self.user(token).await?;
        let digest = digest(token);
        self.inner.store.revoke_token(&hex(&digest)).await?;
        self.lock().remove(&digest);
        Ok((user, digest))
    }

    /// Ends every token of `user` on every node (on others within [`RECHECK`]); how many
    /// there were.
    pub async fn revoke_all(&self, user: &Username) -> ChatResult<u64> {
        let ended = self.inner.store.end_user_tokens(user.as_str()).await?;
        self.forget_user(user.as_str());
        Ok(ended)
    }

    /// Which of `tokens` still exist and have not expired, asking the store.
    pub async fn still_valid(&self, tokens: &[TokenId]) -> ChatResult<Vec<TokenId>> {
        let hashes: Vec<String> = tokens.iter().map(|t| hex(t)).collect();
        let live = self.inner.store.live_tokens(&hashes).await?;
        Ok(live.iter().filter_map(|h| unhex(h)).collect())
    }

    /// Deletes the tokens past their expiry from the store; how many.
    pub async fn delete_expired(&self) -> ChatResult<u64> {
        Ok(self.inner.store.delete_expired_tokens().await?)
    }

    /// Forgets what this node remembers of `tokens`: they are asked about again.
    pub fn forget(&self, tokens: &[TokenId]) {
        if tokens.is_empty() {
            return;
        }
        let mut remembered = self.lock();
        for token in tokens {
            remembered.remove(token);
        }
    }

    /// Forgets what this node remembers of `user`'s tokens.
    pub fn forget_user(&self, user: &str) {
        self.lock().retain(|_, r| r.user.as_str() != user);
    }

    /// What identifies `token`: its SHA-256.
    pub fn id_of(token: &str) -> TokenId {
        digest(token)
    }

    fn remember(&self, digest: TokenId, user: Username, expires_at_us: i64) {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenId, Remembered>> {
        self.inner.remembered.lock().unwrap_or_else(|e| e.into_inner())
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

fn digest(token: &str) -> TokenId {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A token's id back from the store's hex; `None` for anything else.
fn unhex(text: &str) -> Option<TokenId> {
    let mut id = [0u8; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (byte, pair) in id.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_the_stores_hex() {
        let id = digest("some token");
        assert_eq!(unhex(&hex(&id)), Some(id));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }
}
