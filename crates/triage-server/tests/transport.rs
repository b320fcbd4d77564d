//! Transport: TLS with a test certificate, and client deadlines.

mod common;

use std::time::Duration;

use common::{FRANCE, PROOF, request, root, settings};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use triage_core::config::TlsSettings;
use triage_proto::v1::Preferences;
use triage_proto::v1::router_client::RouterClient;
use triage_server::RoutingEngine;

#[tokio::test]
async fn tls_handshake_with_a_test_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("test certificate");
    let (cert_pem, key_pem) = (generated.cert.pem(), generated.key_pair.serialize_pem());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, &key_pem).expect("write key");
    let mut s = settings();
    s.server.tls = Some(TlsSettings { cert, key });
    let engine = RoutingEngine::from_settings(&s, &root()).expect("engine");
    let server = triage_server::start(engine, &s, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server starts");

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS handshake");
    let reply = RouterClient::new(channel)
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes over TLS")
        .into_inner();
    assert!(!reply.model.is_empty());

    // A plaintext client cannot talk to it.
    let plain = async {
        let mut c = RouterClient::connect(format!("http://{}", server.addr)).await?;
        c.route(request(FRANCE, Preferences::default()))
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), plain)
            .await
            .map_or(true, |r| r.is_err())
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_expired_deadline_is_honoured() {
    let (server, mut client) = common::start().await;
    let mut r = tonic::Request::new(request(&PROOF.repeat(20), Preferences::default()));
    r.set_timeout(Duration::from_micros(200));
    let status = client.route(r).await.expect_err("deadline too short");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The server is fine afterwards.
    client
        .route(request(FRANCE, Preferences::default()))
        .await
        .expect("routes");
    server.shutdown().await.expect("clean shutdown");
}
