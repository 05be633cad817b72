//! Attaching as operators configure it (`[xdp] mode`), and the native → generic fallback.

use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};

use super::{XdpError, mode_name};
use crate::config::AttachMode;

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
