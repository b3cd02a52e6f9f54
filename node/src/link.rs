//! The node's outbound link: dial the coordinator over mTLS (directly or
//! through the hospital's HTTP CONNECT proxy), say hello, send heartbeats,
//! take jobs and send back results (and the reviewed results the data
//! steward decided on, whenever they are ready), and reconnect with
//! exponential backoff and jitter whenever the link drops. No inbound port
//! is ever opened.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plexus_proto::v1 as pb;
use plexus_proto::v1::node_link_client::NodeLinkClient;

use crate::job::JobRunner;
use crate::review::{desk, ReviewQueue};

pub struct Link {
    pub runner: Arc<JobRunner>,
    /// The `[tls]` files, re-read at every connection.
    pub credentials: crate::credentials::Credentials,
    pub snapshot: Box<dyn Fn() -> String + Send + Sync>,
    /// Reviewed results wait here until they are answered and sent.
    pub review: ReviewQueue,
}

enum SessionEnd {
    /// We were connected, then the stream ended.
    Dropped(String),
    /// We never got as far as a welcome.
    Failed(String),
    Shutdown,
}

impl Link {
    /// Keeps the link up until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let cfg = &self.runner.config.coordinator;
        let max = Duration::from_secs(cfg.max_backoff_secs);
        let mut attempt: u32 = 0;
        loop {
            let end = self.session(&shutdown).await;
            let reason = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Dropped(reason) => {
                    attempt = 0;
                    reason
                }
                SessionEnd::Failed(reason) => reason,
            };
            let delay = backoff(attempt, max);
            attempt = attempt.saturating_add(1);
            warn!(
                coordinator = %cfg.address,
                proxy = cfg.proxy.as_deref().unwrap_or("none"),
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                reason = %reason,
                "cannot reach the coordinator; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let cfg = &self.runner.config;
        let opts = plexus_tls::ConnectOptions {
            server_name: cfg.coordinator.server_name.clone(),
            proxy: cfg.coordinator.proxy.clone(),
            connect_timeout: Duration::from_secs(10),
        };
        let tls = self.credentials.for_connection().await;
        let channel = tokio::select! {
            c = plexus_tls::connect(&cfg.coordinator.address, tls, opts) => match c {
                Ok(c) => c,
                Err(e) => return SessionEnd::Failed(e.to_string()),
            },
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let mut client = NodeLinkClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::NodeMessage>(64);
        let hello = pb::NodeMessage {
            msg: Some(pb::node_message::Msg::Hello(pb::Hello {
                node_id: cfg.node.id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                dictionary_version: self.runner.dictionary.fingerprint(),
                data_snapshot: (self.snapshot)(),
            })),
        };
        tx.send(hello).await.expect("receiver alive");
        let response = tokio::select! {
            r = client.attach(ReceiverStream::new(rx)) => r,
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return SessionEnd::Failed(format!(
                    "coordinator refused the stream: {}",
                    status.message()
                ))
            }
        };
        let first = tokio::select! {
            m = inbound.message() => m,
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let interval = match first {
            Ok(Some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Welcome(w)),
            })) => Duration::from_millis(w.heartbeat_interval_ms.clamp(200, 300_000) as u64),
            Ok(_) => return SessionEnd::Failed("coordinator did not welcome the node".into()),
            Err(status) => return SessionEnd::Failed(status.message().to_string()),
        };
        info!(coordinator = %cfg.coordinator.address, "connected to the coordinator");

        // Everything spawned for this session dies with it (a dropped or
        // killed session must not keep the stream open behind our back).
        let beat_tx = tx.clone();
        let data = self.runner.data.clone();
        // The data source is probed once per interval on its own task, so a
        // warehouse that went down shows as degraded (and one that came
        // back as healthy) within about one interval, and a slow probe
        // never delays a heartbeat.
        let probed = data.clone();
        let _probe = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                probed.refresh().await;
                tokio::time::sleep(interval).await;
            }
        }));
        let _heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let health = data.health();
                let msg = pb::NodeMessage {
                    msg: Some(pb::node_message::Msg::Heartbeat(pb::Heartbeat {
                        sent_unix_ms: chrono::Utc::now().timestamp_millis(),
                        data_snapshot: data.snapshot().unwrap_or_default(),
                        degraded: health.is_some(),
                        health_detail: health.unwrap_or_default(),
                    })),
                };
                if beat_tx.send(msg).await.is_err() {
                    break;
                }
            }
        }));
        let mut jobs = tokio::task::JoinSet::new();
        let mut review_tick = tokio::time::interval(desk::POLL);
        review_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = review_tick.tick() => {
                    self.send_reviewed(&tx).await;
                    continue;
                }
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
            };
            match msg {
                Ok(Some(pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::SignedJob(job)),
                })) => {
                    while jobs.try_join_next().is_some() {}
                    let runner = self.runner.clone();
                    let tx = tx.clone();
                    jobs.spawn(async move {
                        let Some(msg) = runner.take(job).await else {
                            return;
                        };
                        let _ = tx.send(pb::NodeMessage { msg: Some(msg) }).await;
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) => break SessionEnd::Dropped("the coordinator closed the stream".into()),
                Err(status) => {
                    break SessionEnd::Dropped(format!("stream failed: {}", status.message()))
                }
            }
        };
        if matches!(end, SessionEnd::Shutdown) {
            // Give jobs in flight a moment to finish and send their answers.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while jobs.join_next().await.is_some() {}
            })
            .await;
        }
        end
    }
}

impl Link {
    /// Sends the answers to reviewed results that are ready, and closes
    /// each in the queue once it is on the stream.
    async fn send_reviewed(&self, tx: &mpsc::Sender<pb::NodeMessage>) {
        let queue = self.review.clone();
        let now = chrono::Utc::now().timestamp_millis();
        let ready = match tokio::task::spawn_blocking(move || desk::ready(&queue, now)).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the review queue");
                return;
            }
            Err(e) => {
                warn!(error = %e, "reading the review queue failed");
                return;
            }
        };
        for (job_id, result) in ready {
            let msg = pb::NodeMessage {
                msg: Some(pb::node_message::Msg::Result(result)),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
            let note = format!("sent at {}", chrono::Utc::now().to_rfc3339());
            if let Err(e) = self.review.close(&job_id, &note) {
                warn!(job_id = %job_id, error = %e, "sent a reviewed result but cannot note it");
            }
        }
    }
}

/// Exponential backoff with full jitter: a random delay up to
/// min(max, 500 ms * 2^attempt), never under 100 ms.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(16));
    let cap = base.min(max);
    let ms = rand::rng().random_range(100..=cap.as_millis().max(100) as u64);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        for attempt in 0..40 {
            let d = backoff(attempt, max);
            assert!(
                d >= Duration::from_millis(100) && d <= max,
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(0, max) <= Duration::from_millis(500));
    }
}
