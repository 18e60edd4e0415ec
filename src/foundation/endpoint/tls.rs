//! TLS to PostgreSQL, with rustls: libpq's `sslmode` and `sslrootcert` in a connection URL.
//!
//! tokio-postgres parses `sslmode` but knows only `disable`, `prefer` and `require`, and
//! rejects `sslrootcert`. So both are taken out of the URL here, before the driver sees
//! it, and turned into a rustls configuration:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` | when the server offers TLS | no |
//! | `require` | always | no (as Heroku Postgres's Essential plans need); with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the host connected to |
//!
//! The trusted CAs are those in `sslrootcert=PATH` (PEM), else the system's
//! (`/etc/ssl/certs`; `sslrootcert=system` says so explicitly, as in libpq 16).
//!
//! Without `sslmode`: `disable` for a server on this machine (localhost, a loopback
//! address, a Unix socket: encrypting adds nothing there), `require` for any other host
//! with `NODE_ENV=production`, `prefer` otherwise.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as DriverMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection uses TLS (libpq's `sslmode`, `allow` read as `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            // libpq's allow tries plain text first; prefer accepts every server allow does.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    System,
    File(PathBuf),
}

/// A connection setting pgchat cannot use; the message names the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error(
        "unknown sslmode {0:?}: use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    UnknownSslMode(String),
    #[error("{0} is not supported (pgchat reads sslmode and sslrootcert; client certificates are not supported): remove it")]
    Unsupported(String),
    #[error("sslrootcert {path:?}: {problem}")]
    RootCert { path: PathBuf, problem: String },
    #[error("sslmode={0} needs trusted CA certificates and the system has none (install the ca-certificates package): set sslrootcert=PATH to the CA's PEM file, or use sslmode=require to encrypt without verifying")]
    NoSystemRoots(&'static str),
}

/// The TLS settings taken out of a URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    /// `sslmode`, when the URL gives one.
    pub(crate) mode: Option<SslMode>,
    pub(crate) root_cert: Option<RootCert>,
}

/// Splits `url` into what tokio-postgres should parse and the TLS settings pgchat handles.
/// Accepts both forms the driver does: `postgres://…?sslmode=…` and `key=value …`.
pub(crate) fn split(url: &str) -> Result<(String, TlsParams), TlsError> {
    let (rest, taken) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_uri(url)
    } else {
        split_key_value(url)
    };
    let mut params = TlsParams::default();
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => {
                params.mode = Some(SslMode::parse(&value).ok_or(TlsError::UnknownSslMode(value))?)
            }
            "sslrootcert" => {
                params.root_cert = Some(match value.as_str() {
                    "system" => RootCert::System,
                    _ => RootCert::File(PathBuf::from(value)),
                })
            }
            other => return Err(TlsError::Unsupported(other.to_string())),
        }
    }
    Ok((rest, params))
}

/// Keys taken out of the URL: pgchat's own, and the other `ssl*` keys of libpq, so they
/// are refused with a reason (tokio-postgres handles `sslnegotiation` itself).
fn is_taken(key: &str) -> bool {
    key.starts_with("ssl") && key != "sslnegotiation"
}

fn split_uri(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k);
        if is_taken(&key) {
            taken.push((key, decode(v)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

/// libpq's `key = value` form: values may be single-quoted, with `\'` and `\\` escapes.
fn split_key_value(s: &str) -> (String, Vec<(String, String)>) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut kept: Vec<&str> = Vec::new();
    let mut taken = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            skip_ws(&mut i);
            let quoted = i < b.len() && b[i] == b'\'';
            if quoted {
                i += 1;
            }
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                        continue;
                    }
                    b'\'' if quoted => {
                        i += 1;
                        break;
                    }
                    c if !quoted && c.is_ascii_whitespace() => break,
                    c => value.push(c),
                }
                i += 1;
            }
        }
        if is_taken(key) {
            taken.push((
                key.to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        } else {
            // Malformed input is kept as it was: the driver's parser then says what is wrong.
            kept.push(&s[start..i]);
        }
    }
    (kept.join(" "), taken)
}

/// The TLS of one endpoint: its mode, and the connector tokio-postgres uses.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    /// Where the trusted CAs come from, as messages name it.
    pub(crate) roots: String,
    pub(crate) connector: MakeRustlsConnect,
}

/// Settles the mode (`params`, else the default for `pg`'s hosts), sets it on `pg`, and
/// builds the connector, reading the trusted CAs when the mode verifies.
pub(crate) fn configure(
    pg: &mut tokio_postgres::Config,
    params: &TlsParams,
    production: bool,
) -> Result<Tls, TlsError> {
    let mut mode = params.mode.unwrap_or_else(|| default_mode(pg, production));
    if mode == SslMode::Require && params.root_cert.is_some() {
        mode = SslMode::VerifyCa; // libpq: a root certificate makes require check the CA
    }
    pg.ssl_mode(match mode {
        SslMode::Disable => DriverMode::Disable,
        SslMode::Prefer => DriverMode::Prefer,
        _ => DriverMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let (config, roots) = if mode.verifies() {
        let (store, roots) = load_roots(params.root_cert.as_ref(), mode)?;
        let config = if mode == SslMode::VerifyFull {
            builder.with_root_certificates(store).with_no_client_auth()
        } else {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| TlsError::RootCert {
                    path: PathBuf::from(&roots),
                    problem: e.to_string(),
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
                .with_no_client_auth()
        };
        (config, roots)
    } else {
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        (config, String::new())
    };
    Ok(Tls {
        mode,
        roots,
        connector: MakeRustlsConnect::new(config),
    })
}

/// `disable` for a server on this machine, `require` elsewhere in production, else
/// `prefer`.
fn default_mode(pg: &tokio_postgres::Config, production: bool) -> SslMode {
    let local = pg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    });
    if local {
        SslMode::Disable
    } else if production {
        SslMode::Require
    } else {
        SslMode::Prefer
    }
}

fn load_roots(
    root_cert: Option<&RootCert>,
    mode: SslMode,
) -> Result<(RootCertStore, String), TlsError> {
    let mut store = RootCertStore::empty();
    match root_cert {
        Some(RootCert::File(path)) => {
            let problem = |problem: String| TlsError::RootCert {
                path: path.clone(),
                problem,
            };
            let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| problem(format!("not a PEM certificate file: {e}")))?;
            if certs.is_empty() {
                return Err(problem(
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|e| problem(format!("a certificate pgchat cannot use: {e}")))?;
            }
            Ok((store, path.display().to_string()))
        }
        Some(RootCert::System) | None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(TlsError::NoSystemRoots(mode.as_str()));
            }
            Ok((store, "the system's trusted CAs".into()))
        }
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not
/// compared with the host (webpki checks the chain first, so a name error means the chain
/// was good).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encrypted, whoever's certificate it is (the handshake's own
/// signatures are still checked, so the connection is bound to the certificate shown).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What to do about a failed TLS handshake, when the error says enough to tell.
pub(crate) fn hint(error: &tokio_postgres::Error, tls: &Tls, host: &str) -> Option<String> {
    use std::error::Error as _;
    let cause = error.source()?;
    if cause.to_string().contains("server does not support TLS") {
        return Some(format!(
            "sslmode={} needs TLS: turn ssl on in the server's postgresql.conf, or use sslmode=prefer or disable",
            tls.mode.as_str()
        ));
    }
    let rustls = cause
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|e| e.downcast_ref::<rustls::Error>())?;
    let rustls::Error::InvalidCertificate(problem) = rustls else {
        return None;
    };
    Some(match problem {
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a CA in {}: set sslrootcert=PATH to the \
             CA certificate that signed it, or use sslmode=require to encrypt without verifying",
            tls.roots
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate is not issued for {host:?}: connect by a name the \
                 certificate lists, or use sslmode=verify-ca to check only the CA"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired: renew it on the server".into()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_are_taken_out_of_both_url_forms() {
        let (rest, p) =
            split("postgres://u:p@db.example.com/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@db.example.com/app?application_name=x");
        assert_eq!(p.mode, Some(SslMode::VerifyFull));
        assert_eq!(p.root_cert, Some(RootCert::File("/ca.pem".into())));

        let (rest, p) =
            split("host=db port=5432 sslmode = 'verify-ca' sslrootcert='/a b\\'c.pem' dbname=x")
                .unwrap();
        assert_eq!(rest, "host=db port=5432 dbname=x");
        assert_eq!(p.mode, Some(SslMode::VerifyCa));
        assert_eq!(p.root_cert, Some(RootCert::File("/a b'c.pem".into())));

        let (rest, p) = split("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), p.mode),
            ("postgres://h/db", Some(SslMode::Require))
        );
        let (_, p) = split("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(p.root_cert, Some(RootCert::System));
        assert_eq!(split("postgres://h/db").unwrap().1, TlsParams::default());
    }

    #[test]
    fn unknown_modes_and_client_certificates_are_refused_by_name() {
        let e = split("postgres://h/db?sslmode=verify_full").unwrap_err();
        assert!(e.to_string().contains("verify_full"), "{e}");
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = split("host=h sslcert=/c.pem").unwrap_err();
        assert!(e.to_string().contains("sslcert"), "{e}");
    }

    #[test]
    fn without_sslmode_local_servers_stay_plain_and_production_requires_tls_elsewhere() {
        let mode = |url: &str, production: bool| {
            let mut pg: tokio_postgres::Config = url.parse().unwrap();
            configure(&mut pg, &TlsParams::default(), production)
                .unwrap()
                .mode
        };
        for local in [
            "postgres://u@localhost/db",
            "postgres://u@127.0.0.1/db",
            "postgres://u@[::1]/db",
            "host=/var/run/postgresql dbname=db",
        ] {
            assert_eq!(mode(local, true), SslMode::Disable, "{local}");
        }
        assert_eq!(
            mode("postgres://u@db.example.com/db", true),
            SslMode::Require
        );
        assert_eq!(
            mode("postgres://u@db.example.com/db", false),
            SslMode::Prefer
        );
    }

    #[test]
    fn an_unreadable_or_empty_root_certificate_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("pgchat-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let params = TlsParams {
            mode: Some(SslMode::Require),
            root_cert: Some(RootCert::File(missing.clone())),
        };
        let mut pg: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        let e = configure(&mut pg, &params, false)
            .err()
            .expect("unreadable");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let params = TlsParams {
            root_cert: Some(RootCert::File(empty)),
            ..params
        };
        let e = configure(&mut pg, &params, false)
            .err()
            .expect("no certificate");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
