//! A minimal client of the coordinator's HTTP/JSON API, for the tests and
//! the benchmark that compare it with gRPC: HTTP/1.1 over the same mutual
//! TLS, a certificate from a `pki` folder, answering the status and the
//! JSON body. It keeps its connection open between requests, as the R
//! and Python clients do. Researchers use those clients, or the CLI.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use plexus_tls::TlsFiles;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub struct HttpClient {
    connector: TlsConnector,
    address: SocketAddr,
    /// The open connection, taken by one request at a time.
    open: tokio::sync::Mutex<Option<Sender>>,
}

/// An answer: the HTTP status and the body as JSON.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl HttpClient {
    /// A client with certificate `name` of the `pki` folder.
    pub fn new(pki: &Path, name: &str, address: SocketAddr) -> anyhow::Result<Self> {
        let files = TlsFiles::in_dir(pki, name);
        let mut config = (*plexus_tls::client_config(&files)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            connector: TlsConnector::from(Arc::new(config)),
            address,
            open: tokio::sync::Mutex::new(None),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> anyhow::Result<Answer> {
        self.request("POST", path, Some(body)).await
    }

    /// A new connection.
    async fn connect(&self) -> anyhow::Result<Sender> {
        let tcp = TcpStream::connect(self.address).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let tls = self.connector.connect(name, tcp).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// One request, on the open connection when it is still usable.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut open = self.open.lock().await;
        let kept = match open.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match kept {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        *open = Some(sender);
        let body = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {path} answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok(Answer { status, body })
    }
}
