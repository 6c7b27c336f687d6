//! TLS for the shared store's connection, as libpq reads it from the URL: `sslmode` (`disable`,
//! `allow` and `prefer` (the default: TLS when the server offers it), `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert` (a PEM file of the certificates to trust, or `system` for
//! the Mozilla roots; `~/.postgresql/root.crt` when not given).
//!
//! As in libpq, `prefer` and `require` encrypt without checking who answers; `verify-ca` checks
//! that the server's certificate chains to a trusted one, and `verify-full` also that it names
//! the host. The PostgreSQL driver knows only the first three modes, so the last two (and
//! `sslrootcert`) are taken out of the URL here and the driver is told `require`.

use anyhow::{anyhow, bail, Context, Result};
use postgres::config::SslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the server's certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing (`prefer`, `require`): encrypted against eavesdropping only.
    Nothing,
    /// That it chains to a trusted certificate (`verify-ca`).
    Chain,
    /// That, and that it names the host (`verify-full`).
    ChainAndName,
}

/// The driver's configuration for `url` and the TLS connector its `sslmode` asks for.
pub fn config(url: &str) -> Result<(postgres::Config, MakeRustlsConnect)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut check = Check::Nothing;
    let mut root: Option<String> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .with_context(|| format!("the URL's {key} is not UTF-8"))?;
        match (key, decoded.as_ref()) {
            ("sslrootcert", file) => root = Some(file.to_string()),
            ("sslmode", "verify-ca") => check = Check::Chain,
            ("sslmode", "verify-full") => check = Check::ChainAndName,
            ("sslmode", "allow") => kept.push("sslmode=prefer".to_string()),
            _ => kept.push(pair.to_string()),
        }
    }
    if check != Check::Nothing {
        kept.retain(|p| !p.starts_with("sslmode="));
        kept.push("sslmode=require".to_string());
    }
    let rewritten = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    let config = postgres::Config::from_str(&rewritten).map_err(|e| {
        anyhow!("{e} (sslmode takes disable, allow, prefer, require, verify-ca or verify-full)")
    })?;
    if config.get_ssl_mode() == SslMode::Disable {
        // No handshake will happen: no certificate to read either.
        check = Check::Nothing;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match check {
        Check::Nothing => None,
        _ => Some(trusted(root.as_deref())?),
    };
    let verifier = match roots {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("cannot use the trusted certificates")?,
        ),
        None => None,
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("no TLS version in common with the crypto provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            verifier,
            names: check == Check::ChainAndName,
            provider,
        }))
        .with_no_client_auth();
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// The certificates `sslrootcert` names: a PEM file, or `system` (the Mozilla roots); when not
/// given, libpq's `~/.postgresql/root.crt`.
fn trusted(root: Option<&str>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if root == Some("system") {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let file = match root {
        Some(f) => PathBuf::from(f),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            let file = PathBuf::from(home).join(".postgresql/root.crt");
            if !file.is_file() {
                bail!(
                    "sslmode=verify-ca and verify-full check the server against trusted \
                     certificates: add sslrootcert=FILE (PEM) or sslrootcert=system to the URL"
                );
            }
            file
        }
    };
    let certs = CertificateDer::pem_file_iter(&file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "sslrootcert {}: cannot read certificates: {e}",
                file.display()
            )
        })?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        bail!("sslrootcert {}: no certificate in it", file.display());
    }
    Ok(store)
}

/// Checks the server's certificate as the `sslmode` asks, and the handshake's signatures always.
#[derive(Debug)]
struct Verifier {
    /// The chain's check (`None`: the certificate is not checked).
    verifier: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must name the host.
    names: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(verifier) = &self.verifier else {
            return Ok(ServerCertVerified::assertion());
        };
        match verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_map_onto_the_driver() {
        let mode = |url: &str| config(url).map(|(c, _)| c.get_ssl_mode());
        let base = "postgres://me@db.example/food";
        assert_eq!(mode(base).unwrap(), SslMode::Prefer);
        assert_eq!(
            mode(&format!("{base}?sslmode=disable")).unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode(&format!("{base}?sslmode=allow")).unwrap(),
            SslMode::Prefer
        );
        assert_eq!(
            mode(&format!("{base}?sslmode=require")).unwrap(),
            SslMode::Require
        );
        let system = format!("{base}?sslmode=verify-full&sslrootcert=system&connect_timeout=5");
        let (c, _) = config(&system).unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(
            c.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        let missing = config(&format!(
            "{base}?sslmode=verify-ca&sslrootcert=/nonexistent.pem"
        ));
        let err = missing.err().unwrap().to_string();
        assert!(err.contains("/nonexistent.pem"), "{err}");
        let err = config(&format!("{base}?sslmode=sometimes"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("verify-full"), "{err}");
    }
}
