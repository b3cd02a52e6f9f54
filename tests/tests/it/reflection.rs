//! Server reflection is on, so grpcurl and friends can list and call the
//! services (over mTLS, with any network certificate).

use plexus_tests::{sandbox, Sandbox, SandboxOptions};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_plexus_service() {
    let sb = Sandbox::start(SandboxOptions::new(50, 1)).await.unwrap();
    let client = sb.client(sandbox::AUDITOR).await.unwrap();
    let mut reflection = ServerReflectionClient::new(client.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "plexus.v1.Admin",
        "plexus.v1.Audit",
        "plexus.v1.NodeLink",
        "plexus.v1.Research",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    sb.shutdown().await.unwrap();
}
