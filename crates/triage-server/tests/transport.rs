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

#[tokio::test]
async fn the_server_ends_calls_past_its_own_timeout_whatever_the_client_asks() {
    let mut s = settings();
    s.server.request_timeout_ms = 1;
    let (server, mut client) = common::start_with(s).await;
    // No client deadline at all: the server's own limit ends the call.
    let status = client
        .route(request(&PROOF.repeat(20), Preferences::default()))
        .await
        .expect_err("longer than a millisecond");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    server.shutdown().await.expect("clean shutdown");
}

/// Whether the server closes `stream` within `within` (a read ends or fails).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("test certificate");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    let mut s = settings();
    s.server.tls = Some(TlsSettings { cert, key });
    s.server.tls_handshake_ms = 200;
    let engine = RoutingEngine::from_settings(&s, &root()).expect("engine");
    let server = triage_server::start(engine, &s, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("server starts");
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a connection that never sends its ClientHello is closed after tls_handshake_ms"
    );
    server.shutdown().await.expect("clean shutdown");
}

/// `GET /metrics` on a fresh connection, or `None` if no answer came within `within`.
async fn scrape_within(addr: std::net::SocketAddr, within: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(within, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn the_metrics_endpoint_drops_slow_clients_and_caps_its_connections() {
    use tokio::io::AsyncWriteExt;
    let mut s = settings();
    s.metrics.listen = Some("127.0.0.1:0".parse().expect("addr"));
    s.metrics.header_read_ms = 1500;
    s.metrics.max_connections = 1;
    let (server, _client) = common::start_with(s).await;
    let addr = server.metrics_addr.expect("metrics bound");

    // A slow-loris client sends half a request head and stops: it is cut off.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /metr").await.expect("send");
    // While it holds the only slot, a scrape waits rather than being served beside it.
    assert_eq!(
        scrape_within(addr, Duration::from_millis(300)).await,
        None,
        "max_connections = 1: the second connection waits for the first"
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "the half-sent head is dropped after header_read_ms"
    );
    let body = scrape_within(addr, Duration::from_secs(10))
        .await
        .expect("served once the slot is free");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    server.shutdown().await.expect("clean shutdown");
}
