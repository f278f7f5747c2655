//! The "TLS" flags: the gRPC port's certificate and key.
//!
//! Owns: these flags. Does not own: reading the files (`app`), nor serving TLS (`grpc`).

use clap::Args;

/// The "TLS" flags; both or neither.
#[derive(Debug, Clone, Args)]
pub struct TlsFlags {
    /// TLS for the gRPC and grpc-web port: the certificate chain, PEM. Needs `--tls-key`.
    /// Without it the port speaks plain text (fine on loopback or behind a TLS-terminating
    /// proxy).
    #[arg(
        long,
        env = "NOTIFY_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS: the private key of `--tls-cert`, PEM.
    #[arg(
        long,
        env = "NOTIFY_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}
