//! Who exists: the names of users known to exist, interned so every message to one user
//! shares one allocation of the name. A user removed by the operator is forgotten here; on
//! other nodes of a cluster the name stays known until they restart (see protocol.md).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{ChatError, ChatResult, Code};
use crate::store::Store;

#[derive(Default)]
pub(crate) struct Users {
    known: Mutex<HashSet<Arc<str>>>,
}

impl Users {
    pub fn remember(&self, user: &Arc<str>) {
        let mut known = self.lock();
        if !known.contains(user) {
            known.insert(user.clone());
        }
    }

    pub fn forget(&self, user: &str) {
        self.lock().remove(user);
    }

    /// The interned name of an existing user, asking the store the first time.
    pub async fn existing(&self, store: &Store, name: &str) -> ChatResult<Arc<str>> {
        if let Some(known) = self.lock().get(name) {
            return Ok(known.clone());
        }
        if store.user_exists(name).await? {
            let name: Arc<str> = Arc::from(name);
            self.remember(&name);
            Ok(name)
        } else {
            Err(no_such_user(name))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Arc<str>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn no_such_user(name: &str) -> ChatError {
    ChatError::new(Code::NoSuchUser, format!("there is no user {name:?}"))
}
