//! Attaching as operators configure it (`[xdp] mode`), and the native → generic fallback.
//!
//! The link is created with BPF_LINK_CREATE here rather than through aya, so that the
//! relay holds the link's descriptor itself: an upgrade hands a duplicate of it to the
//! new process ([`crate::handover`]), which keeps the program attached after this
//! process exits. A bpf_link detaches when its last descriptor closes, so a crash
//! (`kill -9`) leaves nothing attached and nothing pinned behind.

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};

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
    pub link: Link,
}

/// How the program is attached to an interface.
#[derive(Debug)]
pub enum Link {
    /// A bpf_link this process holds a descriptor of (and may hand over).
    Fd(OwnedFd),
    /// Attached by aya's netlink fallback (kernels without XDP bpf_link, before 5.9):
    /// it cannot be handed over.
    Aya(XdpLinkId),
}

/// `bpf(2)` commands and constants (include/uapi/linux/bpf.h, if_link.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// `union bpf_attr` for BPF_LINK_CREATE; the tail stays zero as the kernel requires.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

/// `bpf(cmd, attr)`: the kernel's result, or its error. `T` is the command's part of
/// `union bpf_attr`, `#[repr(C)]`, zero where unused, as the kernel requires.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of `attr`, which are initialised.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// A bpf_link of `program` on `ifindex`; `Err` with the kernel's error.
fn link_create(program: &Xdp, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    let prog = program
        .fd()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let attr = LinkCreate {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: match mode {
            XdpMode::Skb => XDP_FLAGS_SKB_MODE,
            _ => XDP_FLAGS_DRV_MODE,
        },
        ..LinkCreate::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
        let link = match link_create(program, ifindex, try_mode) {
            Ok(fd) => Ok(Link::Fd(fd)),
            // No XDP bpf_link on this kernel: aya attaches through netlink.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                program.attach_to_if_index(ifindex, try_mode).map(Link::Aya)
            }
            Err(io_error) => Err(aya::programs::ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_link_create",
                    io_error,
                },
            )),
        };
        match link {
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
