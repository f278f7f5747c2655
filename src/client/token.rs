//! `token`: mints a platform-style HS256 token, for development and tests, with the same
//! claims the platform issues (`docs/architecture.md` "Identity and authorization").

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::auth::{self, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// Arguments of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A role, e.g. `admin`, `super_admin`, `service` (repeat, or comma-separated).
    #[arg(long = "role", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The HS256 secret the server verifies with. Default: the secret of a server started with
    /// `--dev` in this directory.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The issuer (`iss`).
    #[arg(long = "jwt-issuer", env = "NOTIFY_JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// The audience (`aud`).
    #[arg(long = "jwt-audience", env = "NOTIFY_JWT_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
}

/// Mints the token described by `args`.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(!args.sub.is_empty(), "--sub must not be empty");
    let secret = secret_or_dev(args.secret.as_deref())?;
    mint_with(
        &secret,
        &args.sub,
        &args.roles,
        args.ttl,
        &args.issuer,
        &args.audience,
    )
}

/// `secret`, or else the secret of a server started with `--dev` in this directory.
pub fn secret_or_dev(secret: Option<&str>) -> anyhow::Result<String> {
    let secret = match secret {
        Some(secret) => secret.to_owned(),
        // Read as the server reads it: trimmed, and an empty file is an error naming it.
        None => auth::dev_secret::read(std::path::Path::new(auth::DEV_SECRET_FILE))?.with_context(
            || {
                format!(
                    "no --jwt-secret (JWT_SECRET), and no {} from a server started with --dev \
                     here",
                    auth::DEV_SECRET_FILE
                )
            },
        )?,
    };
    anyhow::ensure!(!secret.is_empty(), "the secret must not be empty");
    Ok(secret)
}

/// An HS256 token for `sub` with `roles`.
pub fn mint_with(
    secret: &str,
    sub: &str,
    roles: &[String],
    ttl: Duration,
    issuer: &str,
    audience: &str,
) -> anyhow::Result<String> {
    auth::mint_hs256(secret.as_bytes(), sub, roles, ttl, issuer, audience)
        .context("cannot encode the token")
}

/// `token`: prints the token on standard output.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(&args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::auth::{Policy, Verifier};

    /// `token` alone, as the command line's subcommand (the whole command line is `cli`'s,
    /// above this module).
    #[derive(Debug, Parser)]
    enum Command {
        Token(TokenArgs),
    }

    fn parse(args: &[&str]) -> TokenArgs {
        let Command::Token(args) = Command::try_parse_from(args).unwrap();
        args
    }

    #[test]
    fn a_minted_token_verifies_with_the_same_secret_and_carries_its_roles() {
        let args = parse(&[
            "notify-backbone",
            "token",
            "--sub",
            "u1",
            "--role",
            "admin,service",
            "--ttl",
            "10m",
            "--jwt-secret",
            "s3cret",
        ]);
        let token = mint(&args).unwrap();
        let verifier = Verifier::hs256(
            b"s3cret",
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
            Duration::from_secs(5),
        );
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.user_id, "u1");
        assert!(Policy::default().is_admin(&principal));
        assert!(Policy::default().may_publish(&principal).is_ok());
        let other = Verifier::hs256(b"other", DEFAULT_ISSUER, DEFAULT_AUDIENCE, Duration::ZERO);
        assert!(other.verify(&token).is_err());
    }

    #[test]
    fn an_empty_subject_is_refused() {
        let args = parse(&["notify-backbone", "token", "--sub", "", "--jwt-secret", "s"]);
        assert!(mint(&args).is_err());
    }
}
