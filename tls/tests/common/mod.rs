//! Throwaway PKI shared by the integration tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use plexus_tls::{require_role, DevCa, PeerInfo, Role, TlsFiles};
use tonic::body::Body;
use tonic::codegen::http;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA in `dir/ca.pem` plus `coordinator` and `hospital-a` (node) certificates.
pub struct Pki {
    pub ca: DevCa,
    pub coordinator: TlsFiles,
    pub node: TlsFiles,
}

pub fn files(dir: &Path, ca: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: ca.to_owned(),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        crl: None,
    }
}

pub fn pki(dir: &Path) -> Pki {
    let ca = DevCa::generate("plexus test ca").unwrap();
    let (ca_pem, _) = ca.save(dir).unwrap();
    ca.issue(
        Role::Coordinator,
        "coordinator",
        &["localhost".to_owned()],
        &[LOCALHOST],
    )
    .unwrap()
    .save(dir, "coordinator")
    .unwrap();
    ca.issue(Role::Node, "hospital-a", &[], &[])
        .unwrap()
        .save(dir, "hospital-a")
        .unwrap();
    Pki {
        coordinator: files(dir, &ca_pem, "coordinator"),
        node: files(dir, &ca_pem, "hospital-a"),
        ca,
    }
}

/// Answers every call with the caller's identity in a header, or
/// PermissionDenied for non-node callers, using only what tonic puts in the extensions.
#[derive(Clone)]
pub struct WhoAmI;

impl tonic::server::NamedService for WhoAmI {
    const NAME: &'static str = "plexus.test.WhoAmI";
}

impl tower::Service<http::Request<Body>> for WhoAmI {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let mut call = tonic::Request::new(());
        if let Some(peer) = req.extensions().get::<PeerInfo>() {
            call.extensions_mut().insert(peer.clone());
        }
        let response = match require_role(&call, &[Role::Node]) {
            Ok(identity) => {
                let mut response = tonic::Status::ok("").into_http::<Body>();
                response
                    .headers_mut()
                    .insert("x-identity", identity.to_string().parse().unwrap());
                response
            }
            Err(status) => status.into_http(),
        };
        Box::pin(async move { Ok(response) })
    }
}

pub async fn call_whoami(channel: &mut tonic::transport::Channel) -> http::Response<Body> {
    use tower::{Service, ServiceExt};
    let req = http::Request::builder()
        .method("POST")
        .uri("/plexus.test.WhoAmI/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::empty())
        .unwrap();
    channel.ready().await.unwrap().call(req).await.unwrap()
}
