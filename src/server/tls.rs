//! `--tls-cert` and `--tls-key`: the certificate chain and key read at start-up into the one
//! rustls configuration every TLS connection of both listeners shares.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsFiles;

/// The server's TLS configuration from `files`; the error names the file at fault and why.
/// TLS 1.2 and 1.3 with rustls's safe defaults (ring's cipher suites), no client certificates.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(ring::default_provider());
    // Checked on its own first, so that a key ring cannot use is blamed on the key file.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("cannot use the TLS key in {}: {e}", files.key.display()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "cannot use the TLS certificate in {} with the key in {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file at `path`, the server's own first; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!(
            "cannot read the TLS certificate file {}: {e}",
            path.display()
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate (BEGIN CERTIFICATE) in it"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (BEGIN PRIVATE KEY, RSA or EC PRIVATE KEY) in it".to_string()
            }
            e => e.to_string(),
        };
        format!("cannot read the TLS key file {}: {why}", path.display())
    })
}
