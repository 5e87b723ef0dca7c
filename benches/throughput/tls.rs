//! The TLS scenarios' configuration (feature `tls`): one fixed test certificate, the server
//! configuration both TLS servers use, and the load generator's client configuration.
//!
//! **Certificate**: embedded below as PEM rather than generated at each run: no new
//! dependency (rcgen), no `openssl` program needed on the machine that runs the bench (CI
//! included), no temporary files, and every run of every server serves the very same chain,
//! so runs and machines compare. It is a test key for loopback only, worth nothing. An ECDSA
//! P-256 CA ("reactor-pool bench CA") signs an ECDSA P-256 leaf for `localhost` and
//! `127.0.0.1`; both are valid from 2000-01-01 to 9999-12-31 (RFC 5280's "no expiry"), so
//! the bench never breaks on a date. Made with OpenSSL 3.0:
//!
//! ```text
//! mkdir db && touch db/index.txt && echo 1000 > db/serial
//! # ca.cnf: [ca] default_ca=bench; [bench] dir=., database=./db/index.txt,
//! #   serial=./db/serial, new_certs_dir=./db, default_md=sha256, policy=any,
//! #   unique_subject=no; [any] commonName=supplied;
//! #   [ca_ext] basicConstraints=critical,CA:TRUE, keyUsage=critical,keyCertSign,cRLSign,
//! #   subjectKeyIdentifier=hash;
//! #   [leaf_ext] basicConstraints=critical,CA:FALSE, keyUsage=critical,digitalSignature,
//! #   extendedKeyUsage=serverAuth, subjectAltName=DNS:localhost,IP:127.0.0.1,
//! #   subjectKeyIdentifier=hash, authorityKeyIdentifier=keyid
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
//! openssl req -new -key ca.key -subj "/CN=reactor-pool bench CA" -out ca.csr
//! openssl ca -batch -config ca.cnf -selfsign -keyfile ca.key -in ca.csr -out ca.pem \
//!     -extensions ca_ext -startdate 20000101000000Z -enddate 99991231235959Z -notext
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
//! openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
//! openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in server.csr \
//!     -out server.pem -extensions leaf_ext -startdate 20000101000000Z \
//!     -enddate 99991231235959Z -notext
//! ```
//!
//! **Configurations**: rustls 0.23 with the ring provider on both sides (the one
//! `reactor_pool::rustls` and tokio-rustls are built with here), rustls' safe default
//! protocol versions (so TLS 1.3 is negotiated) and the provider's default cipher suites and
//! key exchange groups (X25519 first). The server configuration is rustls' default otherwise
//! (no ALPN, no client authentication, two TLS 1.3 session tickets after each handshake);
//! both servers build it with [`server_config`]. The client trusts the CA only and never
//! resumes a session, so every connection of the handshake scenario does a full handshake.

use std::io;
use std::sync::Arc;

use reactor_pool::rustls;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The name the client asks for (SNI) and checks the certificate against.
pub const SERVER_NAME: &str = "localhost";

/// The CA the client trusts.
const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBdDCCARqgAwIBAgICEAAwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVcmVhY3Rv
ci1wb29sIGJlbmNoIENBMCAXDTAwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5
WjAgMR4wHAYDVQQDDBVyZWFjdG9yLXBvb2wgYmVuY2ggQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASDIR5T2Hry5wdvGWENI/ZlUcVl3Pa6qIJNuAoHMWjZcm9w
D6eyLgdJeIb3cJZN7Esf7lwM9xWfA/3jF8h0/vWfo0IwQDAPBgNVHRMBAf8EBTAD
AQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUE/tzZvezTOQ09hB6LuL6+lfE
NewwCgYIKoZIzj0EAwIDSAAwRQIhALLQ2SvVY7ATTmdFo3ctxfWSDI20W+m+yhQt
EAOWx6oYAiAigpFHWqMBsqEcbB9RSeE+XW2d7iuYrlr7yEZaeJHUCg==
-----END CERTIFICATE-----
";

/// The server's certificate (the leaf; the chain the servers send).
const SERVER_CERT_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBuTCCAV+gAwIBAgICEAEwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVcmVhY3Rv
ci1wb29sIGJlbmNoIENBMCAXDTAwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5
WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AARBYEyRPyO/Yr0iUuojP2D0t4aNoGTPWFYCbOlLQVTU3Lixu2iSWGYbSfWoTUjc
LUcb7Y6nfohDLJF21LmKyOKTo4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGCCWxvY2FsaG9z
dIcEfwAAATAdBgNVHQ4EFgQUc+WBcMfXfTx4y6SuuAdjelDvwhEwHwYDVR0jBBgw
FoAUE/tzZvezTOQ09hB6LuL6+lfENewwCgYIKoZIzj0EAwIDSAAwRQIhAMGJjSOP
89kz7FIrfv+hMW3ruRAy/s7FPPSfDAwq6CVcAiBxeQucKp+A9jAW5t04DYTdHz76
LgvB/P9UJyqm1qtIjg==
-----END CERTIFICATE-----
";

/// The server's private key (PKCS#8).
const SERVER_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg358C1YyqyXlms3cv
AKrThMLPI1VwhRfgAPXLnPKlQGShRANCAARBYEyRPyO/Yr0iUuojP2D0t4aNoGTP
WFYCbOlLQVTU3Lixu2iSWGYbSfWoTUjcLUcb7Y6nfohDLJF21LmKyOKT
-----END PRIVATE KEY-----
";

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configuration of both TLS servers (reactor-pool and tokio-rustls).
pub fn server_config() -> io::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(SERVER_CERT_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("server certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes())
        .map_err(|e| invalid("server key", e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("server protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("server certificate", e))?;
    Ok(Arc::new(config))
}

/// The load generator's configuration: trusts the bench CA, never resumes a session.
pub fn client_config() -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA_PEM.as_bytes()) {
        let cert = cert.map_err(|e| invalid("CA certificate", e))?;
        roots.add(cert).map_err(|e| invalid("CA certificate", e))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("client protocol versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client connection to the bench server, its ClientHello queued.
pub fn connect(config: &Arc<ClientConfig>) -> io::Result<rustls::ClientConnection> {
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| invalid(SERVER_NAME, e))?;
    rustls::ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)
}

/// Writes the server's certificate and key as PEM files `server.pem` and `server.key` in
/// `dir`, for servers that load them from files (http_hello's `--tls-cert`/`--tls-key`,
/// nginx); returns their paths.
pub fn write_server_pem(
    dir: &std::path::Path,
) -> io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, SERVER_CERT_PEM)?;
    std::fs::write(&key, SERVER_KEY_PEM)?;
    Ok((cert, key))
}
