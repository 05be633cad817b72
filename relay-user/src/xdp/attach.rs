//! Attach modes as operators configure them (`[xdp] mode`), and the native → generic
//! fallback.

use std::{fmt, str::FromStr};

use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};

use super::{XdpError, mode_name};

/// `[xdp] mode` in the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
    /// No kernel fast path: everything is relayed from userspace.
    Off,
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown XDP mode `{other}` (expected auto, native, generic or off)"
            )),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Off => "off",
        })
    }
}

/// One interface the program runs on.
#[derive(Debug)]
pub struct Attached {
    pub interface: String,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub mode: &'static str,
    pub link: XdpLinkId,
}

pub(super) fn attach(
    program: &mut Xdp,
    interface: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<Attached, XdpError> {
    let tries: &[XdpMode] = match mode {
        AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        AttachMode::Native => &[XdpMode::Driver],
        AttachMode::Generic => &[XdpMode::Skb],
        AttachMode::Off => return Err(XdpError::Disabled),
    };
    let mut last_err = None;
    for &try_mode in tries {
        match program.attach_to_if_index(ifindex, try_mode) {
            Ok(link) => {
                let mode = mode_name(try_mode);
                tracing::info!(interface, ifindex, mode, "XDP program attached");
                return Ok(Attached {
                    interface: interface.into(),
                    ifindex,
                    mode,
                    link,
                });
            }
            Err(source) => {
                if tries.len() > 1 {
                    tracing::warn!(
                        interface,
                        error = %source,
                        "native XDP not available on this interface; falling back to generic mode \
                         (slower, still in the kernel)"
                    );
                }
                last_err = Some(XdpError::Attach {
                    interface: interface.into(),
                    mode: mode_name(try_mode),
                    source,
                });
            }
        }
    }
    Err(last_err.expect("at least one mode tried"))
}
