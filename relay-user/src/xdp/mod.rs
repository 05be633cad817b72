//! The kernel fast path seen from userspace: loading the XDP object, attaching it to
//! interfaces (native first, generic as the logged fallback), the IP forwarding its FIB
//! lookups need (`forwarding`), and its maps: [`XdpMaps`] turns the core's commands into
//! entries, which a [`MapWriter`] writes (the loaded maps, or [`FakeMaps`] in tests);
//! [`XdpReader`] reads the counters back without the writer's lock.

pub mod adopt;
mod attach;
pub mod bandwidth;
pub mod bench;
mod fake;
mod forwarding;
mod kernel_maps;
mod logs;
pub mod maps;
mod offload;
mod reader;
pub mod shield;
pub mod swap;
mod writer;

pub use attach::{Attached, Link};
pub use bandwidth::BandwidthLimits;
pub use fake::FakeMaps;
pub use forwarding::{ForwardingGuard, GUARD_TABLE, GuardState, setup as setup_forwarding};
pub use kernel_maps::KernelMaps;
pub use logs::spawn_log_pump;
pub use maps::XdpMaps;
pub use reader::XdpReader;
pub use writer::{Entry, Key, MapWriter, XdpMapsError};

use std::{os::fd::AsFd as _, sync::Arc};

use crate::config::AttachMode;
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};
use relay_common::{DEFAULT_MAX_ALLOCATIONS, IfaceCounters, XDP_PROGRAM, map_sizes};

/// The object built from `relay-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "loading the XDP object failed: {0} (needs root or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN and a kernel with BPF/BTF)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program `{XDP_PROGRAM}`: rebuild with `cargo xtask build`")]
    MissingProgram,
    #[error(
        "the kernel refused the XDP program: {0} (on \"pointer -= pointer prohibited\" or EACCES, grant CAP_PERFMON: the verifier needs it for the program's packet-pointer arithmetic)"
    )]
    Verify(#[source] aya::programs::ProgramError),
    #[error("XDP is switched off (`[xdp] mode = \"off\"`)")]
    Disabled,
    #[error("interface `{0}` does not exist (check `ip link`)")]
    UnknownInterface(String),
    #[error("attaching XDP to `{interface}` in {mode} mode failed: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("opening the XDP counter maps for reading: {0}")]
    Counters(#[source] XdpMapsError),
}

/// A loaded XDP program and the interfaces it is attached to. Dropping it detaches
/// (unless a new process took over duplicates of its links: see [`adopt`]).
pub struct XdpPath {
    /// `None` when taken over from the previous process (nothing loaded here).
    ebpf: Option<Ebpf>,
    attached: Vec<Attached>,
    max_allocations: u32,
    /// Opened at load, while the object still holds every map.
    reader: Arc<XdpReader>,
    /// Descriptors of [`adopt::HANDED_MAPS`], for an upgrade.
    handed: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// A new process holds the links now: dropping this closes only our descriptors.
    handed_over: bool,
    /// Taken over from a running relay that has not committed the handover yet: it still
    /// holds the links, so dropping this (a refused upgrade) detaches nothing.
    adopted_uncommitted: bool,
    /// Replacing the program in a taken-over link failed: some link may still run the
    /// previous build's program, so this process must not tell a successor that the
    /// running program is this build's ([`XdpPath::running_tag`]).
    swap_failed: bool,
}

impl XdpPath {
    /// Loads the embedded object and verifies the program; attaches nowhere yet. Maps are
    /// sized for [`DEFAULT_MAX_ALLOCATIONS`].
    pub fn load() -> Result<Self, XdpError> {
        Self::load_with(DEFAULT_MAX_ALLOCATIONS)
    }

    /// As [`XdpPath::load`], with the fast-path maps sized for `max_allocations`
    /// (see [`relay_common::map_sizes`]).
    pub fn load_with(max_allocations: u32) -> Result<Self, XdpError> {
        raise_memlock_limit();
        let max_allocations = max_allocations.max(1);
        let mut loader = EbpfLoader::new();
        let sizes = map_sizes(max_allocations);
        let bandwidth = relay_common::bandwidth_map_sizes(max_allocations);
        for (name, size) in sizes.into_iter().chain(bandwidth) {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader.load(swap::object()).map_err(XdpError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::MissingProgram)?
            .try_into()
            .map_err(XdpError::Verify)?;
        verify(program)?;
        let reader = Arc::new(XdpReader::open(&ebpf).map_err(XdpError::Counters)?);
        let handed = adopt::dup_handed(&ebpf).map_err(XdpError::Counters)?;
        Ok(Self {
            ebpf: Some(ebpf),
            attached: Vec::new(),
            max_allocations,
            reader,
            handed,
            handed_over: false,
            adopted_uncommitted: false,
            swap_failed: false,
        })
    }

    /// Takes the fast-path maps (once) for the daemon's map writer. The interfaces attached
    /// so far become redirect targets; attach first, or add later ones with
    /// [`XdpMaps::add_redirect_interface`].
    pub fn take_maps(&mut self) -> Result<XdpMaps, XdpMapsError> {
        let attached: Vec<u32> = self.attached.iter().map(|a| a.ifindex).collect();
        let max = self.max_allocations;
        XdpMaps::take(self.ebpf_mut(), max, &attached)
    }

    /// The aya `Ebpf` handle, for the log pump and for tests; `None` when the path was
    /// taken over from the previous process.
    pub fn loaded_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }

    /// As [`XdpPath::loaded_mut`], on a path this process loaded (tests, setup).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf
            .as_mut()
            .expect("a loaded XDP path (not one taken over)")
    }

    /// The loaded program, e.g. for `TestRun` in tests.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf_mut()
            .program_mut(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked in load()")
    }

    /// Attaches to `interface` as `mode` asks; `Auto` tries native and falls back to
    /// generic, logging why. Returns what was actually attached.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&Attached, XdpError> {
        if mode == AttachMode::Off {
            return Err(XdpError::Disabled);
        }
        let ifindex = ifindex(interface)?;
        let program = self.program_mut();
        let attached = attach::attach(program, interface, ifindex, mode)?;
        self.attached.push(attached);
        Ok(self.attached.last().expect("just pushed"))
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// The counters' own read handles (no lock shared with the map writer).
    pub fn reader(&self) -> Arc<XdpReader> {
        self.reader.clone()
    }

    /// Packets and bytes seen per ingress ifindex, summed over CPUs.
    pub fn iface_counters(&self) -> Result<Vec<(u32, IfaceCounters)>, XdpMapsError> {
        self.reader.iface_counters()
    }
}

impl XdpPath {
    /// A new process took over the links and maps: this one lets go without detaching.
    pub fn mark_handed_over(&mut self) {
        self.handed_over = true;
    }

    /// The old process committed the handover: the links are this process's alone now,
    /// and dropping this path detaches the program. A program of this build loaded onto
    /// the taken-over maps ([`swap`]) replaces the running one in every link now.
    pub fn mark_committed(&mut self) {
        if self.adopted_uncommitted
            && let Some(ebpf) = &self.ebpf
        {
            let program = swap::program_fd(ebpf);
            for a in &self.attached {
                let Link::Fd(link) = &a.link else { continue };
                let swapped = program
                    .ok_or_else(|| std::io::Error::other("the loaded program has no descriptor"))
                    .and_then(|p| swap::link_update(link.as_fd(), p));
                match swapped {
                    Ok(()) => tracing::info!(interface = %a.interface, tag = %adopt::program_tag(),
                        "XDP program replaced by this build's in the running link (BPF_LINK_UPDATE): same maps, no gap"),
                    Err(e) => {
                        self.swap_failed = true;
                        tracing::error!(interface = %a.interface, error = %e,
                            "replacing the XDP program failed: the previous build's program keeps forwarding on the same maps; the next upgrade swaps it again, a restart runs this build's")
                    }
                }
            }
        }
        self.adopted_uncommitted = false;
    }

    /// What a successor is told runs in the links: this build's [`adopt::program_tag`],
    /// or, after a failed swap, a tag no build has, so that any successor loads its own
    /// program and swaps every link again.
    pub fn running_tag(&self) -> String {
        if self.swap_failed {
            format!("{}-partly-swapped", adopt::program_tag())
        } else {
            adopt::program_tag()
        }
    }

    /// Takes the program off every interface now (BPF_LINK_DETACH), though other
    /// processes hold descriptors of the links: for a successor whose config turns XDP
    /// off, which must not leave the kernel forwarding on maps nobody updates.
    pub fn detach_now(&mut self) {
        for a in &self.attached {
            let Link::Fd(link) = &a.link else { continue };
            match swap::link_detach(link.as_fd()) {
                Ok(()) => {
                    tracing::info!(interface = %a.interface, "XDP program detached (the new config turns XDP off)")
                }
                Err(e) => tracing::error!(interface = %a.interface, error = %e,
                    "detaching the XDP program failed: it detaches when the previous process exits"),
            }
        }
        self.attached.clear();
    }
}

impl Drop for XdpPath {
    fn drop(&mut self) {
        for a in &self.attached {
            if self.handed_over {
                tracing::info!(interface = %a.interface, "XDP program stays attached for the new process");
            } else if self.adopted_uncommitted {
                tracing::info!(interface = %a.interface, "XDP program stays attached: the running relay that offered the handover keeps it");
            } else {
                tracing::info!(interface = %a.interface, "XDP program detached");
            }
        }
    }
}

/// Has the kernel verify and load `program`.
fn verify(program: &mut Xdp) -> Result<(), XdpError> {
    // The verifier gives up with EAGAIN when a signal reaches the loading thread
    // while it works (a child exiting, a stop/continue); the kernel means "try again",
    // and libbpf retries the same way.
    let mut attempts = 0;
    loop {
        match program.load() {
            Ok(()) => return Ok(()),
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempts < 5 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(XdpError::Verify(e)),
        }
    }
}

fn ifindex(interface: &str) -> Result<u32, XdpError> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| XdpError::UnknownInterface(interface.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(XdpError::UnknownInterface(interface.to_owned())),
        i => Ok(i),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub(super) fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    }
}
