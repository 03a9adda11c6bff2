//! `GET /metrics`: the server's counts in the OpenMetrics text format (Prometheus reads it;
//! <https://prometheus.io/docs/specs/om/open_metrics_spec/>), and the counters of the live
//! page. What the core keeps anyway (open connections and their bytes, the hash queue, the
//! bytes queued for sessions, memory) is read into the metrics here, when scraped.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;
use crate::chat::Chat;
use crate::conns::{door_name, Conns, DoorTotals, DOORS};
use crate::metrics::{catch_up, DoorLabel, METRICS};

/// The scrape's reading of the core into the metrics, one at a time.
#[derive(Default)]
pub struct Metrics {
    sampling: Mutex<()>,
}

impl Metrics {
    /// Reads what is read rather than counted into the metrics; returns the doors' totals.
    fn sample(&self, conns: &Conns, chat: &Chat) -> [DoorTotals; 4] {
        let _one_at_a_time = self.sampling.lock().unwrap_or_else(|e| e.into_inner());
        let totals = conns.per_door();
        for (door, t) in DOORS.iter().zip(&totals) {
            let label = DoorLabel {
                door: door_name(*door),
            };
            METRICS.connections.get_or_create(&label).set(t.open as i64);
            catch_up(&METRICS.accepted.get_or_create(&label), t.opened);
            catch_up(&METRICS.bytes_received.get_or_create(&label), t.bytes_in);
            catch_up(&METRICS.bytes_sent.get_or_create(&label), t.bytes_out);
        }
        METRICS.hash_queue.set(chat.hash_queue_depth() as i64);
        METRICS.push_queue_bytes.set(chat.queued_bytes() as i64);
        METRICS.sample_process();
        totals
    }

    /// The live page's counters.
    pub fn counters(&self, conns: &Conns, chat: &Chat) -> serde_json::Value {
        let totals = self.sample(conns, chat);
        let per_door = |f: &dyn Fn(&DoorTotals) -> u64| -> serde_json::Map<String, serde_json::Value> {
            DOORS
                .iter()
                .zip(&totals)
                .map(|(d, t)| (door_name(*d).to_string(), f(t).into()))
                .collect()
        };
        let [ok, bad, limited, busy] = METRICS.logins();
        json!({
            "connections": per_door(&|t| t.open),
            "bytes_in": per_door(&|t| t.bytes_in),
            "bytes_out": per_door(&|t| t.bytes_out),
            "messages_direct": METRICS.committed_direct.get(),
            "messages_room": METRICS.committed_room.get(),
            "pushes": METRICS.pushes.get(),
            "slow_reader_kicks": METRICS.kicks.get(),
            "logins": {"ok": ok, "bad_credentials": bad, "rate_limited": limited, "busy": busy},
            "hash_queue": chat.hash_queue_depth(),
            "store_errors": METRICS.store_errors.get(),
            "online_here": chat.online_here(),
        })
    }
}

pub async fn scrape(State(state): State<Arc<AdminState>>) -> Response {
    let _ = state.metrics.sample(&state.conns, &state.chat);
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &METRICS.registry) {
        tracing::error!(error = %e, "encoding the metrics failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
