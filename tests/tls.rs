//! The gRPC port over TLS: a client that trusts the server's certificate subscribes and
//! publishes; a plain-text client gets nothing. The certificate is made for each run.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::path::PathBuf;

use notify_backbone::pb::notification_service_client::NotificationServiceClient;
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, made with
/// `openssl` (rustls, rightly, refuses a CA certificate used as the server's own): (CA cert,
/// server cert, server key) paths.
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=notify-test-ca"];
    ca.extend(p256);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(p256);
    csr.extend(["-keyout", "key.pem", "-out", "server.csr"]);
    openssl(&csr);
    std::fs::write(
        path("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

#[tokio::test]
async fn a_client_that_trusts_the_certificate_streams_over_tls_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let server = TestServer::start_with(|config| {
        config.tls.tls_cert = Some(cert.clone());
        config.tls.tls_key = Some(key.clone());
    })
    .await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = NotificationServiceClient::new(channel);
    let mut stream = subscribe(&mut client, request("u-tls")).await;
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("e-tls", "u-tls", "d1"),
    )
    .await
    .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.id, published.id);

    // Plain text to the TLS port: no call gets through.
    let plain = Endpoint::from_shared(server.url()).unwrap().connect().await;
    if let Ok(channel) = plain {
        let mut client = NotificationServiceClient::new(channel);
        let answer = client.subscribe(request("u-tls")).await;
        assert!(answer.is_err(), "a plain-text call was answered");
    }
    server.stop_within(PATIENCE).await;
}
