//! `[server.tls]`: the port speaks TLS only. A client that trusts the CA gets through; a
//! plaintext client and a client that does not trust the certificate do not.

use crate::api_support;

use std::path::PathBuf;

use api_support::{CLIENT_TOKEN, CONFIG, Token, saga, settled, start, status};
use sagalog::api::pb;
use sagalog::api::pb::sagas_client::SagasClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
        fixture("server.pem").display().to_string(),
        fixture("server.key").display().to_string()
    );
    let server = start(dir.path(), &format!("{CONFIG}{tls}")).await;
    let ca = Certificate::from_pem(std::fs::read(fixture("ca.pem")).unwrap());

    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))
        .unwrap();
    let channel = endpoint.connect().await.expect("TLS connect with the CA");
    let mut client = SagasClient::with_interceptor(channel, Token(Some(CLIENT_TOKEN.into())));
    client.submit(saga("over-tls", 2)).await.unwrap();
    assert_eq!(status(&settled(&mut client, "over-tls").await), pb::SagaStatus::Completed);

    // Plaintext against the TLS port fails.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    if let Ok(channel) = plain {
        let mut client = SagasClient::with_interceptor(channel, Token(Some(CLIENT_TOKEN.into())));
        assert!(client.get(pb::GetRequest { saga_id: "over-tls".into() }).await.is_err());
    }
    // A client that does not trust the CA (no roots configured) fails the handshake.
    let untrusting = Endpoint::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = untrusting {
        let mut client = SagasClient::with_interceptor(channel, Token(Some(CLIENT_TOKEN.into())));
        assert!(client.get(pb::GetRequest { saga_id: "over-tls".into() }).await.is_err());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[server.tls]\ncert = \"nowhere/cert.pem\"\nkey = \"nowhere/key.pem\"\n");
    let path = api_support::write_config(dir.path(), &config);
    let node = sagalog::node::Node::start(&dir.path().join("data"), Some(&path)).await.unwrap();
    let server_config = node.catalog.config.server.clone();
    let err = sagalog::server::start(node, &dir.path().join("data"), server_config).await.err().expect("refused");
    assert!(err.to_string().contains("nowhere/cert.pem"), "{err}");
}
