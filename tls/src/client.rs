//! Dialling the coordinator: TCP (optionally through an HTTP CONNECT proxy),
//! then mutual TLS, then a tonic channel on top.
//!
//! Nodes sit inside hospital networks where the only way out is often a
//! forward proxy, so the tunnel is built here rather than left to tonic, and
//! every failure names the address that could not be reached and why.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::{CertificateError, ClientConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Result, TlsError};
use crate::primed::Primed;

/// Largest CONNECT response head we read before giving up on the proxy.
const MAX_PROXY_RESPONSE: usize = 8 * 1024;

/// HTTP/2 pings keep NAT and proxy idle timers from silently dropping the
/// long-lived node connection, and detect a dead coordinator within ~30 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the coordinator.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Name checked against the server certificate; defaults to the endpoint host.
    /// IP addresses are accepted.
    pub server_name: Option<String>,
    /// `http://host:port` of an HTTP CONNECT proxy, if the network requires one.
    pub proxy: Option<String>,
    /// Limit for TCP connect, proxy negotiation and TLS handshake together.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            server_name: None,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A parsed `host:port`; IPv6 hosts are stored without brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    fn parse(s: &str, default_port: u16) -> std::result::Result<HostPort, String> {
        if s.is_empty() {
            return Err("the host is missing".to_owned());
        }
        if s.contains(['/', '?', '#']) {
            return Err("only a host and port are allowed, without a path".to_owned());
        }
        if s.contains('@') {
            return Err("credentials in the url are not supported".to_owned());
        }
        if s.contains(char::is_whitespace) {
            return Err("it contains whitespace".to_owned());
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or("an ipv6 address is missing its closing ']'")?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("\"{host}\" is not an ipv6 address"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or("expected ':' after ']'")?),
                ),
            }
        } else {
            match s.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err("put ipv6 addresses in brackets, e.g. [::1]:7443".to_owned())
                }
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err("the host is missing".to_owned());
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("port \"{p}\" is not a number from 1 to 65535")),
            },
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

fn parse_endpoint(endpoint: &str) -> Result<HostPort> {
    let invalid = |reason: String| TlsError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let rest = match endpoint.split_once("://") {
        Some(("https", rest)) => rest,
        Some(("http", _)) => {
            return Err(invalid(
                "plexus always uses tls; write https://host:port".to_owned(),
            ))
        }
        Some((scheme, _)) => {
            return Err(invalid(format!(
                "scheme \"{scheme}\" is not supported; write https://host:port"
            )))
        }
        None => endpoint,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    HostPort::parse(rest, 443).map_err(invalid)
}

fn parse_proxy(proxy: &str) -> Result<HostPort> {
    let invalid = |reason: String| TlsError::InvalidProxy {
        proxy: proxy.to_owned(),
        reason,
    };
    let rest = match proxy.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(format!(
            "scheme \"{scheme}\" is not supported; write http://host:port of an http connect proxy"
        )))
        }
        None => proxy,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    HostPort::parse(rest, 80).map_err(invalid)
}

/// Everything needed to open one connection; cloned into tonic's connector
/// so reconnects behave exactly like the first connection.
#[derive(Clone)]
struct Dialer {
    target: HostPort,
    proxy: Option<HostPort>,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    timeout: Duration,
}

impl Dialer {
    fn new(endpoint: &str, config: Arc<ClientConfig>, opts: &ConnectOptions) -> Result<Dialer> {
        let target = parse_endpoint(endpoint)?;
        let proxy = opts.proxy.as_deref().map(parse_proxy).transpose()?;
        let name = opts
            .server_name
            .clone()
            .unwrap_or_else(|| target.host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::InvalidServerName { name })?;
        Ok(Dialer {
            target,
            proxy,
            server_name,
            tls: TlsConnector::from(config),
            timeout: opts.connect_timeout,
        })
    }

    fn describe(&self) -> String {
        match &self.proxy {
            Some(proxy) => format!("{} via proxy {proxy}", self.target),
            None => self.target.to_string(),
        }
    }

    async fn dial(&self) -> Result<TlsStream<TcpStream>> {
        tokio::time::timeout(self.timeout, self.dial_inner())
            .await
            .map_err(|_| TlsError::Timeout {
                addr: self.describe(),
                after: self.timeout,
            })?
    }

    async fn dial_inner(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = match &self.proxy {
            None => open_tcp(&self.target, "").await?,
            Some(proxy) => {
                let mut tcp = open_tcp(proxy, "proxy ").await?;
                http_connect(&mut tcp, proxy, &self.target).await?;
                tcp
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| TlsError::Handshake {
                addr: self.describe(),
                hint: handshake_hint(&source, &self.server_name),
                source,
            })?;
        tracing::debug!(target = %self.target, "tls connection established");
        Ok(stream)
    }

    /// Dials, checks that the server is a coordinator (the CA and the name
    /// are not enough: any network member holds a CA-signed certificate and
    /// might be given the coordinator's DNS name), and waits for the
    /// coordinator's first bytes: with TLS 1.3 the server judges our
    /// certificate only after our side of the handshake is done, so this is
    /// where a revoked or unknown certificate is refused, with the reason.
    ///
    /// A handshake the coordinator cut off is tried again twice, after 50
    /// and 200 ms, within the same timeout: a listener holding off a flood
    /// of connections sheds some of them, and a researcher's call or a
    /// node's reconnection caught in it should not fail for that.
    async fn dial_coordinator(&self) -> Result<Primed> {
        let dial = async {
            let mut pause = Duration::from_millis(50);
            for _ in 0..2 {
                match self.dial_coordinator_inner().await {
                    Err(e) if e.shed() => {
                        tracing::debug!(target = %self.target, error = %e, "handshake cut off; dialling again");
                        tokio::time::sleep(pause).await;
                        pause *= 4;
                    }
                    other => return other,
                }
            }
            self.dial_coordinator_inner().await
        };
        tokio::time::timeout(self.timeout, dial)
            .await
            .map_err(|_| TlsError::Timeout {
                addr: self.describe(),
                after: self.timeout,
            })?
    }

    async fn dial_coordinator_inner(&self) -> Result<Primed> {
        let mut stream = self.dial_inner().await?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        let identity = match cert {
            Some(c) => crate::identity::identity_from_cert(c)?,
            None => {
                return Err(TlsError::NotCoordinator {
                    addr: self.describe(),
                    identity: "nobody (no certificate)".into(),
                })
            }
        };
        if identity.role != crate::identity::Role::Coordinator {
            return Err(TlsError::NotCoordinator {
                addr: self.describe(),
                identity: identity.to_string(),
            });
        }
        // An HTTP/2 server speaks first (its SETTINGS frame).
        let mut first = vec![0u8; 512];
        let n = match stream.read(&mut first).await {
            Ok(0) => {
                return Err(TlsError::Handshake {
                    addr: self.describe(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection right after the handshake",
                    ),
                    hint: " (it did not accept our certificate; check that it was issued by the network's ca, has not expired and has not been revoked)".to_owned(),
                })
            }
            Ok(n) => n,
            Err(source) => {
                return Err(TlsError::Handshake {
                    addr: self.describe(),
                    hint: handshake_hint(&source, &self.server_name),
                    source,
                })
            }
        };
        first.truncate(n);
        Ok(Primed::new(stream, first))
    }
}

/// Resolves and connects, trying each resolved address in turn.
async fn open_tcp(addr: &HostPort, label: &str) -> Result<TcpStream> {
    let resolved: Vec<_> = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| TlsError::Resolve {
            host: format!("{label}{addr}"),
            source,
        })?
        .collect();
    let mut last_error = None;
    for sock in &resolved {
        match TcpStream::connect(sock).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last_error = Some((*sock, e)),
        }
    }
    let (sock, source) = match last_error {
        Some(found) => found,
        None => {
            return Err(TlsError::Resolve {
                host: format!("{label}{addr}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the name resolved to no addresses",
                ),
            })
        }
    };
    let shown = if sock.ip().to_string() == addr.host {
        format!("{label}{addr}")
    } else {
        format!("{label}{addr} ({sock})")
    };
    Err(TlsError::Connect {
        addr: shown,
        hint: connect_hint(&source),
        source,
    })
}

fn connect_hint(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let hint = match e.kind() {
        K::ConnectionRefused => {
            "nothing is listening there; is the coordinator running and the port right?"
        }
        K::TimedOut => {
            "no answer; a firewall may be dropping the traffic, or a proxy may be required"
        }
        K::HostUnreachable | K::NetworkUnreachable => {
            "no route to that network; a proxy may be required"
        }
        K::PermissionDenied => "the connection was blocked locally, probably by a firewall",
        _ => return String::new(),
    };
    format!(" ({hint})")
}

/// Asks an HTTP proxy to open a tunnel, reading its reply byte by byte so
/// that nothing after the response head (the server's TLS bytes) is consumed.
async fn http_connect(tcp: &mut TcpStream, proxy: &HostPort, target: &HostPort) -> Result<()> {
    let protocol = |reason: String| TlsError::ProxyProtocol {
        proxy: proxy.to_string(),
        target: target.to_string(),
        reason,
    };
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| protocol(format!("sending the request failed: {e}")))?;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_RESPONSE {
            return Err(protocol(format!(
                "the response head exceeds {MAX_PROXY_RESPONSE} bytes"
            )));
        }
        let mut byte = [0u8; 1];
        match tcp.read(&mut byte).await {
            Ok(0) => {
                return Err(protocol(
                    "the proxy closed the connection before answering".to_owned(),
                ))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(protocol(format!("reading the response failed: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default().trim().to_owned();
    let mut parts = status_line.split_whitespace();
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(protocol(format!(
            "\"{status_line}\" is not an http/1.x status line; is {proxy} an http proxy?"
        )));
    }
    // RFC 9110: any 2xx to CONNECT means the tunnel is open.
    if !code.starts_with('2') {
        return Err(TlsError::ProxyRefused {
            proxy: proxy.to_string(),
            target: target.to_string(),
            status_line,
        });
    }
    Ok(())
}

fn handshake_hint(e: &std::io::Error, server_name: &ServerName<'_>) -> String {
    let name = server_name.to_str();
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "the server certificate is not signed by the ca in tls.ca; both sides must use the same plexus ca".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the server certificate does not cover \"{name}\"; set server_name, or reissue the coordinator certificate with that dns name or ip"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired; reissue it with `plexus pki issue`".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet; check the clocks on both machines".to_owned()
            }
            CertificateError::Revoked => {
                "the server certificate has been revoked (tls.crl lists it); the coordinator must install a new certificate".to_owned()
            }
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. } => {
                "our tls.crl has expired; run `plexus pki crl` where the network ca is kept and copy the new crl.pem here".to_owned()
            }
            CertificateError::UnknownRevocationStatus => {
                "tls.crl holds no list from the ca that issued the server certificate; add that ca's crl".to_owned()
            }
            _ => return String::new(),
        },
        Some(rustls::Error::AlertReceived(alert)) => match alert {
            rustls::AlertDescription::CertificateRevoked => {
                "the server refused us: our certificate has been revoked; ask the network admin for a new one (`plexus pki issue`)".to_owned()
            }
            rustls::AlertDescription::CertificateExpired => {
                "the server refused us: our certificate has expired or is not valid yet; ask the network admin for a new one, and check the clocks".to_owned()
            }
            rustls::AlertDescription::UnknownCA => {
                "the server refused us: it does not trust the ca that issued our certificate, or cannot check its revocation (is the coordinator's revocation list expired?)".to_owned()
            }
            _ => "the server rejected this connection; check that our certificate was issued by the coordinator's ca, has not expired and has not been revoked".to_owned(),
        },
        Some(rustls::Error::NoApplicationProtocol) => {
            "the server does not speak http/2; is this a plexus coordinator?".to_owned()
        }
        Some(_) => return String::new(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            "the server closed the connection during the handshake; is this a plexus coordinator, or is a proxy interfering?".to_owned()
        }
        None => return String::new(),
    };
    format!(" ({hint})")
}

/// Opens a TLS connection to `endpoint` (`https://host:port` or `host:port`),
/// directly or through `opts.proxy`. Used by [`connect`]; exposed for tests
/// and tools that speak something other than gRPC.
///
/// With TLS 1.3 the server checks our certificate after our side of the
/// handshake is done, so a rejected client certificate shows up on the first
/// read rather than here.
pub async fn dial(
    endpoint: &str,
    config: Arc<ClientConfig>,
    opts: &ConnectOptions,
) -> Result<TlsStream<TcpStream>> {
    Dialer::new(endpoint, config, opts)?.dial().await
}

/// Opens a gRPC channel to the coordinator at `endpoint` (`https://host:port`)
/// over mutual TLS; the server must present a coordinator-role certificate.
///
/// The first connection is made eagerly, up to the coordinator's first
/// HTTP/2 frame, so configuration mistakes and a refused (e.g. revoked)
/// certificate surface here with the reason; afterwards tonic reconnects
/// through the same dialler on demand.
pub async fn connect(
    endpoint: &str,
    config: Arc<ClientConfig>,
    opts: ConnectOptions,
) -> Result<Channel> {
    let dialer = Arc::new(Dialer::new(endpoint, config, &opts)?);
    // Scheme http: the stream handed to tonic is already TLS.
    let channel = Endpoint::from_shared(format!("http://{}", dialer.target))
        .map_err(|e| TlsError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let dialer = dialer.clone();
        async move { dialer.dial_coordinator().await.map(TokioIo::new) }
    });
    channel
        .connect_with_connector(connector)
        .await
        .map_err(|e| TlsError::Transport {
            endpoint: endpoint.to_owned(),
            reason: transport_reason(&e),
        })
}

/// Digs our own error out of tonic's wrapping, or flattens the chain.
fn transport_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(ours) = err.downcast_ref::<TlsError>() {
            return ours.to_string();
        }
        chain.push(err.to_string());
        cur = err.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cut_off_handshake_is_dialled_again() {
        let handshake = |kind| TlsError::Handshake {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::new(kind, "test"),
            hint: String::new(),
        };
        assert!(handshake(std::io::ErrorKind::ConnectionReset).shed());
        assert!(handshake(std::io::ErrorKind::ConnectionAborted).shed());
        // A refused certificate or a server that is not there is final.
        assert!(!handshake(std::io::ErrorKind::InvalidData).shed());
        assert!(!handshake(std::io::ErrorKind::UnexpectedEof).shed());
        assert!(!TlsError::Timeout {
            addr: "127.0.0.1:1".into(),
            after: Duration::from_secs(1),
        }
        .shed());
    }

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("https://coord.example:7443").unwrap(),
            hp("coord.example", 7443)
        );
        assert_eq!(parse_endpoint("https://coord/").unwrap(), hp("coord", 443));
        assert_eq!(parse_endpoint("127.0.0.1:1").unwrap(), hp("127.0.0.1", 1));
        assert_eq!(parse_endpoint("https://[::1]:9").unwrap(), hp("::1", 9));
        assert_eq!(hp("::1", 9).to_string(), "[::1]:9");
        for bad in [
            "http://x:1",
            "ftp://x:1",
            "https://x:0",
            "https://x:99999",
            "https://::1:9",
            "https://x:1/path",
            "https://",
            "https://u:p@x:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} should be rejected");
        }
        let msg = parse_endpoint("http://x:1").unwrap_err().to_string();
        assert_eq!(
            msg,
            "endpoint \"http://x:1\" is invalid: plexus always uses tls; write https://host:port"
        );
    }

    #[test]
    fn proxies_parse() {
        assert_eq!(parse_proxy("http://proxy:3128").unwrap(), hp("proxy", 3128));
        assert_eq!(parse_proxy("proxy").unwrap(), hp("proxy", 80));
        assert!(parse_proxy("https://proxy:3128").is_err());
        assert!(parse_proxy("socks5://proxy:1080").is_err());
    }
}
