//! `relay load`'s command line checked and resolved into what the run needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustls::pki_types::ServerName;

use super::{
    args::{LoadArgs, ModeArg},
    payload, sys,
    turn::{Credentials, DataMode},
};
use crate::probe::{Transport, Trust, UsageError};

/// The command line, checked and resolved.
#[derive(Debug)]
pub(super) struct Setup {
    pub(super) target: SocketAddr,
    pub(super) transport: Transport,
    /// What `tls_config` is built from (TLS only), and the name to verify.
    pub(super) trust: Option<(Trust, ServerName<'static>)>,
    pub(super) peer: SocketAddr,
    pub(super) mode: DataMode,
    pub(super) credentials: Option<Credentials>,
    pub(super) credential_kind: &'static str,
    pub(super) rate: Option<f64>,
    pub(super) threads: usize,
    pub(super) local: IpAddr,
}

pub(super) fn resolve(a: &LoadArgs, unix_now: u64) -> Result<Setup, UsageError> {
    let server = a.server.as_deref().unwrap_or_default();
    let mut target = crate::probe::parse_server(server)?;
    if a.transport == Transport::Tls && server.trim().parse::<SocketAddr>().is_err() {
        target.set_port(Transport::Tls.default_port());
    }
    if a.direct && a.transport != Transport::Udp {
        return Err(UsageError(
            "--direct sends to the UDP echo peer: --transport does not apply".into(),
        ));
    }
    let trust = if a.transport == Transport::Tls {
        let name = match &a.tls.sni {
            Some(n) => ServerName::try_from(n.clone())
                .map_err(|e| UsageError(format!("--sni {n:?}: {e}")))?,
            None => ServerName::IpAddress(target.ip().into()),
        };
        Some((a.tls.trust(), name))
    } else {
        a.tls.refused_on(a.transport)?;
        None
    };
    let mode = match (a.direct, a.mode) {
        (true, _) => DataMode::Direct,
        (false, ModeArg::Channel) => DataMode::Channel,
        (false, ModeArg::Send) => DataMode::Send,
    };
    let peer = match (a.direct, a.peer, a.echo) {
        (true, _, _) => target,
        (false, Some(p), _) => p,
        (false, None, Some(e)) if !e.ip().is_unspecified() && e.port() != 0 => e,
        (false, None, _) => {
            return Err(UsageError(
                "--peer IP:PORT is needed (the echo peer as the relay reaches it), or --echo with \
                 a concrete address"
                    .into(),
            ));
        }
    };
    let resolved = if a.direct {
        None
    } else {
        a.credentials.resolve("load", unix_now)?
    };
    let credential_kind = match &resolved {
        None => "none",
        Some(c) if c.rest => "rest",
        Some(_) => "long-term",
    };
    let credentials = resolved;
    let rate = match a.rate.as_str() {
        "max" => None,
        r => match r.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Some(v),
            _ => {
                return Err(UsageError(format!(
                    "--rate {r:?}: a positive number of packets per second, or \"max\""
                )));
            }
        },
    };
    if a.allocations == 0 {
        return Err(UsageError("--allocations must be at least 1".into()));
    }
    if !(payload::PROBE_LEN..=payload::MAX_PAYLOAD).contains(&a.size) {
        return Err(UsageError(format!(
            "--size {}: between {} and {} bytes",
            a.size,
            payload::PROBE_LEN,
            payload::MAX_PAYLOAD
        )));
    }
    if !(a.duration >= 0.0 && a.duration.is_finite()) {
        return Err(UsageError("--duration must be 0 or more seconds".into()));
    }
    if a.ramp.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(UsageError("--ramp must be a positive rate".into()));
    }
    for (flag, v) in [
        ("--window", a.window),
        ("--burst", a.burst),
        ("--timeout-ms", a.timeout_ms as usize),
    ] {
        if v == 0 {
            return Err(UsageError(format!("{flag} must be at least 1")));
        }
    }
    if a.burst > 64 {
        return Err(UsageError("--burst is at most 64".into()));
    }
    if a.threads == Some(0) {
        return Err(UsageError("--threads must be at least 1".into()));
    }
    let threads = a
        .threads
        .unwrap_or_else(sys::cpu_count)
        .clamp(1, a.allocations);
    let local = a.local.unwrap_or(match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    Ok(Setup {
        target,
        transport: a.transport,
        trust,
        peer,
        mode,
        credentials,
        credential_kind,
        rate,
        threads,
        local,
    })
}
