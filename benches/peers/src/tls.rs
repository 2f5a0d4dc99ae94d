//! TLS 1.3 for the HTTPS peers: rustls with the `ring` provider, a
//! self-signed certificate made at startup, and a client that accepts any
//! certificate (but still checks the handshake signature, as a real client
//! does, so the handshake costs what it should).

use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

/// The ALPN protocol id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The ring provider with one cipher suite, `TLS13_AES_128_GCM_SHA256`,
/// on both sides: AES-128-GCM is the cipher every system of the benchmark
/// runs where it can (the SSH rows use `aes128-gcm@openssh.com`), so that no
/// row is faster or slower for its cipher alone. rustls' default order
/// would pick AES-256-GCM.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    Arc::new(provider)
}

/// A TLS 1.3-only server configuration with a fresh self-signed ECDSA P-256
/// certificate for `localhost` and `127.0.0.1`, offering `alpn`.
pub(crate) fn server_config(alpn: &[u8]) -> anyhow::Result<Arc<ServerConfig>> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("cannot generate a self-signed certificate")?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("rustls refuses the generated certificate")?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS 1.3-only client configuration offering `alpn` that accepts any
/// server certificate. For benchmarks against our own self-signed server
/// only.
pub(crate) fn client_config(alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyCertificate {
        provider: Arc::clone(&provider),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The name the client sends in SNI and "verifies": the server's IP address.
pub(crate) fn server_name(addr: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// Skips the certificate chain and name checks, keeps the handshake
/// signature check.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
