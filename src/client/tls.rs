//! The rustls client configuration: which certificates to trust, and which name to check.
//!
//! # Notes
//! Without `--ca` the trusted roots are `webpki-roots` (Mozilla's list, compiled in) rather
//! than the platform's store: nothing to find or parse at run time, the same on every machine,
//! and a server with a private CA is given with `--ca` anyway.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A client configuration trusting the certificates in the PEM file `ca`, or the built-in
/// roots when there is none.
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match ca {
        Some(path) => roots_from(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    // The provider named, not the process default: which one that is depends on the features
    // every crate in the build turns on.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate in the PEM file at `path`, as trust anchors.
fn roots_from(path: &Path) -> anyhow::Result<RootCertStore> {
    let name = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("cannot read the CA file {name}: {e}"))?;
    if certs.is_empty() {
        bail!("the CA file {name} holds no PEM certificate");
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("the CA file {name} holds an unusable certificate"))?;
    }
    Ok(roots)
}

/// The name the server's certificate must carry: the host of `authority` (`host:port`,
/// `[v6]:port` or a bare host). An IP literal is checked against the certificate's IP SANs.
pub fn server_name(authority: &str) -> anyhow::Result<ServerName<'static>> {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("{host:?} is no name to check a TLS certificate against: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_the_address_is_the_name_checked() {
        let name = |a: &str| server_name(a).unwrap();
        assert_eq!(
            name("localhost:8000"),
            ServerName::try_from("localhost").unwrap()
        );
        assert!(matches!(name("127.0.0.1:6379"), ServerName::IpAddress(_)));
        assert!(matches!(name("[::1]:8000"), ServerName::IpAddress(_)));
        assert_eq!(
            name("example.com"),
            ServerName::try_from("example.com").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("mob-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("empty.pem") && err.contains("no PEM"), "{err}");
        let missing = dir.join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(client_config(None).is_ok());
    }
}
