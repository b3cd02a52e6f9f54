//! Connecting to the coordinator with the user's certificate: the
//! `plexus` CLI's connection options and its client, also used by the
//! sandbox, the benchmarks and the tests, which need it without the CLI.
#![forbid(unsafe_code)]

pub mod http;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tonic::transport::Channel;

use plexus_core::{Error, Query};
use plexus_proto::v1 as pb;
use plexus_proto::v1::{
    admin_client::AdminClient, audit_client::AuditClient, research_client::ResearchClient,
};
use plexus_tls::TlsFiles;

/// How to reach the coordinator and who you are.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Coordinator address; repeat it (or separate with commas) for
    /// active/standby coordinators: the active one is used.
    #[arg(
        long,
        env = "PLEXUS_COORDINATOR",
        default_value = "https://127.0.0.1:7443",
        value_delimiter = ',',
        global = true
    )]
    pub coordinator: Vec<String>,
    /// Folder with ca.pem and NAME.pem/NAME.key (as written by `plexus pki`).
    #[arg(long, env = "PLEXUS_PKI", global = true)]
    pub pki: Option<PathBuf>,
    /// Your certificate name inside --pki.
    #[arg(long = "as", env = "PLEXUS_AS", global = true)]
    pub name: Option<String>,
    /// Network CA certificate (instead of --pki).
    #[arg(long, env = "PLEXUS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Your certificate (instead of --pki/--as).
    #[arg(long, env = "PLEXUS_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Your private key (instead of --pki/--as).
    #[arg(long, env = "PLEXUS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Certificate revocation list to check the coordinator against (with
    /// --pki, DIR/crl.pem is used when present).
    #[arg(long, env = "PLEXUS_CRL", global = true)]
    pub crl: Option<PathBuf>,
    /// TLS name of the coordinator, when it differs from the address's host.
    #[arg(long, env = "PLEXUS_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
}

impl ConnectArgs {
    pub fn tls_files(&self) -> anyhow::Result<TlsFiles> {
        if let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) {
            return Ok(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                crl: self.crl.clone(),
            });
        }
        match (&self.pki, &self.name) {
            (Some(dir), Some(name)) => {
                let mut files = TlsFiles::in_dir(dir, name);
                if let Some(ca) = &self.ca {
                    files.ca = ca.clone();
                }
                if let Some(crl) = &self.crl {
                    files.crl = Some(crl.clone());
                }
                Ok(files)
            }
            _ => bail!(
                "say who you are: --pki DIR --as NAME (files from `plexus pki issue`), or --ca, --cert and --key"
            ),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    channel: Channel,
}

impl Client {
    pub async fn connect(args: &ConnectArgs) -> anyhow::Result<Self> {
        let files = args.tls_files()?;
        files.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::connect_any(&args.coordinator, &files, args.server_name.clone()).await
    }

    /// Connects to the active one of `addresses`, tried in turn: one
    /// that cannot be reached, or answers `unavailable` (a standby), is
    /// skipped. With one address, connects to it without asking.
    pub async fn connect_any(
        addresses: &[String],
        files: &TlsFiles,
        server_name: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut why = Vec::new();
        for address in addresses {
            let client = match Self::connect_with(address, files, server_name.clone()).await {
                Ok(c) if addresses.len() == 1 => return Ok(c),
                Ok(c) => c,
                Err(e) => {
                    why.push(format!("{e:#}"));
                    continue;
                }
            };
            // Any answer but `unavailable` comes from the active one.
            match client
                .research()
                .list_studies(pb::ListStudiesRequest::default())
                .await
            {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    why.push(format!("{address}: {}", status.message()));
                }
                _ => return Ok(client),
            }
        }
        bail!(
            "no active coordinator among {}: {}",
            addresses.join(", "),
            why.join("; ")
        )
    }

    pub async fn connect_with(
        address: &str,
        files: &TlsFiles,
        server_name: Option<String>,
    ) -> anyhow::Result<Self> {
        let tls = plexus_tls::client_config(files).map_err(|e| anyhow::anyhow!("{e}"))?;
        let opts = plexus_tls::ConnectOptions {
            server_name,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
        };
        let channel = plexus_tls::connect(address, Arc::clone(&tls), opts)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot connect to the coordinator at {address}"))?;
        Ok(Client { channel })
    }

    /// The underlying mTLS channel, for other gRPC clients (e.g. reflection).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn research(&self) -> ResearchClient<Channel> {
        ResearchClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel.clone())
    }

    /// Submits a query and waits for its result (up to `wait`).
    pub async fn run_query(
        &self,
        study: &str,
        query: &Query,
        wait: Duration,
    ) -> Result<pb::QueryResult, Error> {
        let query_id = self.submit(study, query).await?;
        self.wait_result(&query_id, wait).await
    }

    /// Submits a query; its id once the coordinator accepted it.
    pub async fn submit(&self, study: &str, query: &Query) -> Result<String, Error> {
        Ok(self
            .research()
            .submit_query(pb::SubmitQueryRequest {
                study_id: study.to_string(),
                query: Some(query.into()),
                ..Default::default()
            })
            .await
            .map_err(|s| plexus_proto::convert::from_status(&s))?
            .into_inner()
            .query_id)
    }

    /// Submits a query in its JSON form, which may write the cohort
    /// (`where`) and a model (`formula`) as text: the coordinator reads it
    /// with its dictionary. Its id once the coordinator accepted it.
    pub async fn submit_json(&self, study: &str, query_json: &str) -> Result<String, Error> {
        Ok(self
            .research()
            .submit_query(pb::SubmitQueryRequest {
                study_id: study.to_string(),
                query: None,
                query_json: query_json.to_string(),
            })
            .await
            .map_err(|s| plexus_proto::convert::from_status(&s))?
            .into_inner()
            .query_id)
    }

    /// The state of one of the caller's queries, waiting up to `wait` for
    /// it to finish. A coordinator that cannot be reached meanwhile (a
    /// restart, a failover) is asked again until `wait` runs out; then the
    /// error is `unavailable` and names the query, which stays accepted and
    /// can be fetched later (`plexus result ID`).
    pub async fn wait_result(
        &self,
        query_id: &str,
        wait: Duration,
    ) -> Result<pb::QueryResult, Error> {
        let mut research = self.research();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let asked = research
                .get_result(pb::GetResultRequest {
                    query_id: query_id.to_string(),
                    wait_ms: left.as_millis().min(60_000) as u32,
                })
                .await
                .map_err(|s| plexus_proto::convert::from_status(&s));
            match asked {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.status != pb::QueryStatus::Pending as i32 || left.is_zero() {
                        return Ok(r);
                    }
                }
                Err(e) if e.code == plexus_core::ErrorCode::Unavailable => {
                    if left.is_zero() {
                        return Err(Error::unavailable(format!(
                            "query {query_id} was accepted, but the coordinator could not be reached while waiting for its result ({}); fetch it with `plexus result {query_id}` once the coordinator is back",
                            e.message
                        )));
                    }
                    tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long a client waits before asking an unreachable coordinator again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The pooled result of a finished query, or its error.
pub fn outcome(r: &pb::QueryResult) -> Result<plexus_core::pool::PooledResult, Error> {
    match pb::QueryStatus::try_from(r.status) {
        Ok(pb::QueryStatus::Succeeded) => serde_json::from_str(&r.result_json)
            .map_err(|e| Error::internal(format!("the coordinator's result is unreadable: {e}"))),
        Ok(pb::QueryStatus::Failed) => Err(r
            .error
            .clone()
            .map(Error::from)
            .unwrap_or_else(|| Error::internal("query failed without an error"))),
        _ => Err(Error::unavailable(format!(
            "query {} is still running; fetch it later",
            r.query_id
        ))),
    }
}
