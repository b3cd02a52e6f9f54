//! The node's outbound link: dial the coordinator over mTLS (directly or
//! through the hospital's HTTP CONNECT proxy), say hello, send heartbeats,
//! take jobs and send back results (and the reviewed results the data
//! steward decided on, whenever they are ready), and reconnect with
//! exponential backoff and jitter whenever the link drops. No inbound port
//! is ever opened.

use std::collections::HashMap;
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

/// The readiness check the link owns: ready while connected.
pub const LINK_CHECK: &str = "coordinator";

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
    /// We were connected, then a newer connection with our identity
    /// replaced ours at the coordinator (status `aborted`).
    Replaced(String),
    /// We never got as far as a welcome.
    Failed(String),
    Shutdown,
}

impl Link {
    /// Keeps the link up until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let cfg = &self.runner.config.coordinator;
        let max = Duration::from_secs(cfg.max_backoff_secs);
        let addresses = cfg.addresses();
        // The coordinator tried next: after a failure or a dropped link,
        // the next one in the list (the standby may have taken over).
        let mut next = 0;
        let mut attempt: u32 = 0;
        // Replacements in a row. Two daemons with one certificate replace
        // each other at every reconnection: each replacement in a row
        // doubles the wait (up to max_backoff_secs), so the pair settles
        // to one swap per max_backoff_secs or so instead of flapping at
        // full speed, while a node replaced once (by an impostor that
        // then leaves, say) is back within half a second.
        let mut replaced: u32 = 0;
        loop {
            let address = addresses[next % addresses.len()];
            let end = self.session(address, &shutdown).await;
            self.runner.metrics.connected.set(0);
            let not_ready = match &end {
                SessionEnd::Shutdown => "the node is shutting down".to_string(),
                SessionEnd::Dropped(r) | SessionEnd::Replaced(r) | SessionEnd::Failed(r) => {
                    format!("not connected to the coordinator ({r})")
                }
            };
            self.runner.readiness.set(LINK_CHECK, false, not_ready);
            let reason = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Dropped(reason) => {
                    attempt = 0;
                    replaced = 0;
                    reason
                }
                SessionEnd::Replaced(reason) => {
                    warn!(
                        replaced_in_a_row = replaced + 1,
                        "another connection with this node's certificate replaced ours at the coordinator; if this repeats, another daemon runs with this node's certificate: stop it, or have the certificate revoked if its key was copied"
                    );
                    attempt = replaced;
                    replaced = replaced.saturating_add(1);
                    reason
                }
                SessionEnd::Failed(reason) => reason,
            };
            next += 1;
            let delay = backoff(attempt, max);
            attempt = attempt.saturating_add(1);
            warn!(
                coordinator = %address,
                next = %addresses[next % addresses.len()],
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

    async fn session(&self, address: &str, shutdown: &CancellationToken) -> SessionEnd {
        let cfg = &self.runner.config;
        let opts = plexus_tls::ConnectOptions {
            server_name: cfg.coordinator.server_name.clone(),
            proxy: cfg.coordinator.proxy.clone(),
            connect_timeout: Duration::from_secs(10),
        };
        let tls = self.credentials.for_connection().await;
        let channel = tokio::select! {
            c = plexus_tls::connect(address, tls, opts) => match c {
                Ok(c) => c,
                Err(e) => return SessionEnd::Failed(e.to_string()),
            },
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        // A job of a model_performance carries the model.
        let mut client = NodeLinkClient::new(channel)
            .max_decoding_message_size(plexus_proto::convert::performance::MAX_MODEL_MESSAGE);
        let (tx, rx) = mpsc::channel::<pb::NodeMessage>(64);
        let (witnessed_size, witnessed_root) = self.runner.witness.reported();
        let hello = pb::NodeMessage {
            msg: Some(pb::node_message::Msg::Hello(pb::Hello {
                node_id: cfg.node.id.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                dictionary_version: self.runner.dictionary.fingerprint(),
                data_snapshot: (self.snapshot)(),
                witnessed_size,
                witnessed_root,
                mapping_notices: self.runner.data.notices(),
            })),
        };
        tx.send(hello).await.expect("receiver alive");
        let hello_sent_ms = self.runner.now_ms();
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
            })) => {
                if w.coordinator_unix_ms > 0 {
                    self.runner.measured_clock(plexus_core::clock::offset_ms(
                        hello_sent_ms,
                        w.coordinator_unix_ms,
                        self.runner.now_ms(),
                    ));
                }
                Duration::from_millis(w.heartbeat_interval_ms.clamp(200, 300_000) as u64)
            }
            Ok(_) => return SessionEnd::Failed("coordinator did not welcome the node".into()),
            Err(status) => return SessionEnd::Failed(status.message().to_string()),
        };
        info!(coordinator = %address, "connected to the coordinator");
        self.runner.metrics.connected.set(1);
        self.runner.readiness.set(LINK_CHECK, true, "");

        // Everything spawned for this session dies with it (a dropped or
        // killed session must not keep the stream open behind our back).
        let beat_tx = tx.clone();
        let data = self.runner.data.clone();
        let clock = self.runner.clone();
        let records = self.runner.clone();
        let witness = self.runner.witness.clone();
        // The data source is probed once per interval on its own task, so a
        // warehouse that went down shows as degraded (and one that came
        // back as healthy) within about one interval, in heartbeats and in
        // /readyz, and a slow probe never delays a heartbeat.
        let probed = data.clone();
        let readiness = self.runner.readiness.clone();
        let _probe = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                match probed.refresh().await {
                    Some(problem) => readiness.set_degraded(problem),
                    None => readiness.clear_degraded(),
                }
                tokio::time::sleep(interval).await;
            }
        }));
        let heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                // A node that cannot write its ledger or job log says so
                // like a data source that cannot read.
                let health = data.health().or_else(|| records.storage_problem());
                let (witnessed_size, witnessed_root) = witness.reported();
                let msg = pb::NodeMessage {
                    msg: Some(pb::node_message::Msg::Heartbeat(pb::Heartbeat {
                        sent_unix_ms: clock.now_ms(),
                        data_snapshot: data.snapshot().unwrap_or_default(),
                        degraded: health.is_some(),
                        health_detail: health.unwrap_or_default(),
                        witnessed_size,
                        witnessed_root,
                    })),
                };
                if beat_tx.send(msg).await.is_err() {
                    break;
                }
            }
        }));
        let mut jobs = tokio::task::JoinSet::new();
        // The envelope of each job task, to answer it if shutdown cuts it short.
        let mut running: HashMap<tokio::task::Id, pb::SignedJob> = HashMap::new();
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
                    while let Some(done) = jobs.try_join_next_with_id() {
                        running.remove(&done.map(|(id, ())| id).unwrap_or_else(|e| e.id()));
                    }
                    let runner = self.runner.clone();
                    let tx = tx.clone();
                    let envelope = job.clone();
                    let handle = jobs.spawn(async move {
                        let Some(msg) = runner.take(job).await else {
                            return;
                        };
                        let _ = tx.send(pb::NodeMessage { msg: Some(msg) }).await;
                    });
                    running.insert(handle.id(), envelope);
                }
                Ok(Some(pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Clock(echo)),
                })) => {
                    // Only an echo of a heartbeat this node sent measures
                    // anything: a made-up send time would fake the offset.
                    let now = self.runner.now_ms();
                    let sent = echo.heartbeat_sent_unix_ms;
                    if sent >= hello_sent_ms && sent <= now && echo.coordinator_unix_ms > 0 {
                        self.runner.measured_clock(plexus_core::clock::offset_ms(
                            sent,
                            echo.coordinator_unix_ms,
                            now,
                        ));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break SessionEnd::Dropped("the coordinator closed the stream".into()),
                Err(status) if status.code() == tonic::Code::Aborted => {
                    break SessionEnd::Replaced(status.message().to_string())
                }
                Err(status) => {
                    break SessionEnd::Dropped(format!("stream failed: {}", status.message()))
                }
            }
        };
        if let SessionEnd::Dropped(reason)
        | SessionEnd::Replaced(reason)
        | SessionEnd::Failed(reason) = &end
        {
            // Jobs still in hand when the link broke are stopped and
            // logged as dropped: nothing goes back for them.
            jobs.abort_all();
            while let Some(done) = jobs.join_next_with_id().await {
                if let Err(e) = done {
                    if let Some(job) = running.remove(&e.id()) {
                        let runner = self.runner.clone();
                        let reason = reason.clone();
                        let _ = tokio::task::spawn_blocking(move || runner.dropped(&job, &reason))
                            .await;
                    }
                }
            }
        }
        if matches!(end, SessionEnd::Shutdown) {
            self.drain(jobs, running, &mut inbound, &tx).await;
            // Close our half of the stream once every answer is queued on
            // it, and wait (briefly) for the coordinator to close its half.
            drop(heartbeat);
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = inbound.message().await {}
            })
            .await;
        }
        end
    }

    /// Shutdown with jobs in flight: they get `node.shutdown_grace_secs`
    /// to finish and send their answers; a job arriving meanwhile, or one
    /// still running at the end, is answered with a retryable error.
    async fn drain(
        &self,
        mut jobs: tokio::task::JoinSet<()>,
        mut running: HashMap<tokio::task::Id, pb::SignedJob>,
        inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
        tx: &mpsc::Sender<pb::NodeMessage>,
    ) {
        let node = &self.runner.config.node;
        let grace = Duration::from_secs(node.shutdown_grace_secs);
        let refusing = format!(
            "node {} is shutting down and takes no new jobs; retry shortly",
            node.id
        );
        info!(
            jobs = jobs.len(),
            grace_secs = grace.as_secs(),
            "shutdown requested; finishing jobs in flight"
        );
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut inbound_open = true;
        loop {
            tokio::select! {
                done = jobs.join_next_with_id() => match done {
                    None => return,
                    Some(Ok((id, ()))) => { running.remove(&id); }
                    Some(Err(e)) => { running.remove(&e.id()); }
                },
                m = inbound.message(), if inbound_open => match m {
                    Ok(Some(pb::CoordinatorMessage {
                        msg: Some(pb::coordinator_message::Msg::SignedJob(job)),
                    })) => {
                        let msg = self.runner.cut_short(&job, &refusing);
                        let _ = tx.send(pb::NodeMessage { msg: Some(msg) }).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => inbound_open = false,
                },
                () = &mut deadline => break,
            }
        }
        // The grace period is over: stop what still runs and say so.
        jobs.abort_all();
        let cut = format!(
            "node {} shut down before this job finished; submit the query again",
            node.id
        );
        while let Some(done) = jobs.join_next_with_id().await {
            let id = match done {
                Ok((id, ())) => {
                    // Finished (and answered) just in time.
                    running.remove(&id);
                    continue;
                }
                Err(e) => e.id(),
            };
            if let Some(job) = running.remove(&id) {
                let msg = self.runner.cut_short(&job, &cut);
                let _ = tx.send(pb::NodeMessage { msg: Some(msg) }).await;
            }
        }
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
