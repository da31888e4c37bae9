//! What `mob chat` and `mob bench` share as clients of a server that may want TLS and a token:
//! the rustls client configuration (`--tls`, `--ca`) and the token (`--token-file`) in each
//! wire format. The transports that use them are the callers' own: blocking threads in
//! `chat`, one mio loop in `bench`.

pub mod tls;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::auth::Token;

/// The command line's choices, before any file is read.
#[derive(Debug, Clone, Default)]
pub struct AccessOptions {
    /// Send the token in this file first (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// Speak TLS (`--tls`).
    pub tls: bool,
    /// Trust this PEM file's certificates instead of the built-in roots (`--ca`, implies TLS).
    pub ca: Option<PathBuf>,
}

/// What a client needs to be let in: files read and checked, ready to use on every connection.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The token, whitespace trimmed; `None` for a server that wants none.
    pub token: Option<Token>,
    /// TLS settings shared by every connection; `None` for plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
}

impl AccessOptions {
    /// Reads the token and CA files; an error names the file and what is wrong with it.
    pub fn load(&self) -> anyhow::Result<Access> {
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let tls = (self.tls || self.ca.is_some())
            .then(|| tls::client_config(self.ca.as_deref()))
            .transpose()?;
        Ok(Access { token, tls })
    }
}
