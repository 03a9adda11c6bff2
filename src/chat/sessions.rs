//! Sessions end with what opened them. The node that answers a logout ends the sessions it
//! holds at once; this task ends the rest, on every node, within [`CHECK_EVERY`]:
//!
//! - a token that was revoked (on any node), ended by the cap per user, or expired takes its
//!   `/events` streams with it: every [`CHECK_EVERY`] the node asks the store, in one query,
//!   which tokens of its live streams are still valid;
//! - in a cluster, a "log out everywhere" on another node ends this node's sessions of that
//!   user: the node reads the logouts of the last [`LOGOUT_WINDOW`] and ends the user's
//!   sessions that began before the logout (a session opened since, a new login, stays);
//! - expired tokens are deleted from the store every [`SWEEP_EVERY`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::tokens::Tokens;
use crate::error::ChatResult;
use crate::hub::Hub;
use crate::store::{PgStore, Store};
use crate::supervisor::{Finished, Supervisor};

/// How often a node checks its streams' tokens and (in a cluster) the logouts: well within the
/// 5 s a token is trusted for.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How far back a node reads logouts: far more than a check's interval plus the longest a
/// logout's transaction may take to commit (the store's 5 s bound on an operation), so none
/// is missed.
const LOGOUT_WINDOW: Duration = Duration::from_secs(30);
/// How often expired tokens are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Tokens asked about in one query at most.
const TOKENS_PER_QUERY: usize = 1000;

pub(crate) fn start(
    store: &Store,
    hub: Hub,
    tokens: Tokens,
    stop: CancellationToken,
    supervisor: &mut Supervisor,
) -> Finished {
    let cluster = match store {
        Store::Postgres(pg) => Some(pg.clone()),
        Store::Sqlite(_) => None,
    };
    supervisor.spawn("the session watcher", watch(cluster, hub, tokens, stop))
}

async fn watch(cluster: Option<PgStore>, hub: Hub, tokens: Tokens, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept = Instant::now();
    // The logouts already acted on: user -> when it logged out, on this node's clock.
    let mut acted_on: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = end_ended_tokens(&hub, &tokens).await {
            tracing::warn!(error = %e, "cannot check the tokens of live streams; trying again");
        }
        if let Some(store) = &cluster {
            if let Err(e) = end_logged_out(store, &hub, &tokens, &mut acted_on).await {
                tracing::warn!(error = %e, "cannot read the logouts of other nodes; trying again");
            }
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = Instant::now();
            match tokens.delete_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(tokens = n, "deleted expired tokens"),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired tokens; trying again later"),
            }
        }
    }
}

/// Ends the streams whose token is no longer valid.
async fn end_ended_tokens(hub: &Hub, tokens: &Tokens) -> ChatResult<()> {
    let in_use = hub.tokens_in_use();
    for chunk in in_use.chunks(TOKENS_PER_QUERY) {
        let valid: HashSet<_> = tokens.still_valid(chunk).await?.into_iter().collect();
        let ended: Vec<_> = chunk.iter().filter(|t| !valid.contains(*t)).copied().collect();
        tokens.forget(&ended);
        let streams: usize = ended.iter().map(|t| hub.end_token(t)).sum();
        if streams > 0 {
            tracing::info!(streams, "ended the event streams of tokens that ended");
        }
    }
    Ok(())
}

/// Ends this node's sessions of users who logged out everywhere, on any node, since they
/// began.
async fn end_logged_out(
    store: &PgStore,
    hub: &Hub,
    tokens: &Tokens,
    acted_on: &mut HashMap<String, Instant>,
) -> ChatResult<()> {
    let logouts = store.recent_logouts(LOGOUT_WINDOW).await?;
    let answered = Instant::now();
    acted_on.retain(|_, at| at.elapsed() < LOGOUT_WINDOW * 2);
    for (user, ago) in logouts {
        // When it happened on this node's clock: the database measured `ago` by its own clock,
        // so no two clocks are compared. Counted from the answer, this is at or a little after
        // the logout (by at most the answer's way back), never before it: a session that began
        // just before the logout ends too; one that began within those milliseconds after it
        // may end as well, and logs in again.
        let at = answered.checked_sub(ago).unwrap_or(answered);
        // Seen before, give or take the round trips of two queries.
        if acted_on
            .get(&user)
            .is_some_and(|seen| seen.max(&at).duration_since(*seen.min(&at)) < Duration::from_millis(500))
        {
            continue;
        }
        tokens.forget_user(&user);
        let ended = hub.end_user(&user, Some(at));
        if ended > 0 {
            tracing::info!(%user, sessions = ended, "logged out everywhere: ended its sessions here");
        }
        acted_on.insert(user, at);
    }
    Ok(())
}
