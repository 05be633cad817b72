//! Client flags shared by `relay stun` and `relay load`: credentials and TLS trust, parsed
//! and checked once so both commands refuse the same mistakes with the same words.

use std::path::PathBuf;

use clap::Args;

use super::{Credentials, Trust, UsageError};

/// Long-term credentials, or a TURN REST secret that mints them.
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialArgs {
    /// Long-term credential username; with --secret, the name part of the REST username.
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Long-term credential password (needs --user).
    #[arg(long, short = 'p', value_name = "PASSWORD")]
    pub password: Option<String>,
    /// TURN REST shared secret: mints "<now+86400>:<user, or the command's name>" and its
    /// password.
    #[arg(long, value_name = "SECRET")]
    pub secret: Option<String>,
}

impl CredentialArgs {
    /// The credentials the flags ask for (`None`: none given). `rest_name` is the name part
    /// of a REST username when --user is absent; `unix_now` dates it.
    pub fn resolve(
        &self,
        rest_name: &str,
        unix_now: u64,
    ) -> Result<Option<Credentials>, UsageError> {
        match (&self.user, &self.password, &self.secret) {
            (_, Some(_), Some(_)) => Err(UsageError(
                "--password and --secret exclude each other (--secret derives the password)".into(),
            )),
            (Some(user), Some(password), None) => Ok(Some(Credentials {
                username: nonempty("--user", user)?.to_owned(),
                password: nonempty("--password", password)?.to_owned(),
                rest: false,
            })),
            (None, Some(_), None) => Err(UsageError("--password needs --user".into())),
            (Some(_), None, None) => Err(UsageError(
                "--user needs --password (or --secret for TURN REST credentials)".into(),
            )),
            (user, None, Some(secret)) => {
                let secret = nonempty("--secret", secret)?;
                let name = match user {
                    Some(u) => nonempty("--user", u)?,
                    None => rest_name,
                };
                Ok(Some(Credentials::rest(
                    secret.as_bytes(),
                    name,
                    unix_now,
                    super::client::REST_TTL_SECS,
                )))
            }
            (None, None, None) => Ok(None),
        }
    }
}

/// How a TLS client checks the server.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// TLS: trust only the CA certificate(s) in this PEM file instead of the system store.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// TLS: do not verify the server's certificate (self-signed test setups only).
    #[arg(long)]
    pub insecure: bool,
    /// TLS: the name to send (SNI) and verify the certificate against; default: SERVER's.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
}

impl TlsArgs {
    pub fn trust(&self) -> Trust {
        match (&self.ca, self.insecure) {
            (Some(ca), _) => Trust::CaFile(ca.clone()),
            (None, true) => Trust::Insecure,
            (None, false) => Trust::System,
        }
    }

    /// `true` if any TLS flag was given (they are refused on other transports).
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.insecure || self.sni.is_some()
    }

    /// The refusal for TLS flags on a run over `transport`.
    pub fn refused_on(&self, transport: impl std::fmt::Display) -> Result<(), UsageError> {
        if self.any() {
            return Err(UsageError(format!(
                "--ca, --insecure and --sni apply to TLS only (this run is over {transport})"
            )));
        }
        Ok(())
    }
}

/// `value`, refused when empty.
pub fn nonempty<'a>(flag: &str, value: &'a str) -> Result<&'a str, UsageError> {
    if value.is_empty() {
        Err(UsageError(format!("{flag} must not be empty")))
    } else {
        Ok(value)
    }
}
