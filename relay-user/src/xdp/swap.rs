//! An upgrade to a build whose kernel program differs: the new process loads ITS program
//! against the running maps (the very kernel objects, so no entry is copied or lost) and
//! swaps it into the running bpf_links with BPF_LINK_UPDATE, which replaces the program
//! on the interface in one step: no packet sees the interface without a program.
//!
//! aya creates an object's maps when it loads the object and writes their descriptor
//! numbers into the program's instructions (`ld_imm64` with BPF_PSEUDO_MAP_FD), but it
//! takes no existing map. So the object is loaded as usual (the maps the daemon shares
//! are created with one entry, as placeholders), then each shared map's descriptor
//! number is pointed at the running map with `dup3` before the program goes to the
//! verifier, which resolves those numbers then. Maps only the new object has (or that
//! are not shared, like the log ring) stay its own.
//!
//! Only layouts that match are swapped: the old process describes its maps (type, key
//! and value sizes, entries, flags, from its object and what it sized them for) to the
//! new one before anything pauses ([`MapLayouts`]); a difference is a refusal with the
//! map named. Migrating entries between layouts is not done: a changed map layout needs a
//! restart.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::OnceLock,
};

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use relay_common::{XDP_PROGRAM, bandwidth_map_sizes, map_sizes};
use serde::{Deserialize, Serialize};

use super::{OBJECT, XdpError, adopt::HANDED_MAPS};

static TEST_OBJECT: OnceLock<&'static [u8]> = OnceLock::new();

/// The kernel object this process runs: the embedded one, or in a build with the
/// `test-hooks` feature the one [`use_test_object`] read.
pub fn object() -> &'static [u8] {
    TEST_OBJECT.get().copied().unwrap_or(OBJECT)
}

/// Names a kernel object a relay started to take over loads instead of its embedded
/// one. Honoured only by debug builds with the `test-hooks` cargo feature (never a
/// release build, even one whose features a workspace-wide build unified), for the test
/// of an upgrade to a changed kernel program without building a second relay.
pub const TEST_OBJECT_ENV: &str = "RELAY_TEST_XDP_OBJECT";

/// A relay started to take over ([`crate::handover`]): with `test-hooks`, loads
/// [`TEST_OBJECT_ENV`] if set. A fresh start always runs the embedded object.
#[cfg(all(feature = "test-hooks", debug_assertions))]
pub fn use_test_object() -> Result<(), String> {
    let Some(path) = std::env::var_os(TEST_OBJECT_ENV) else {
        return Ok(());
    };
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("{TEST_OBJECT_ENV}={}: {e}", path.to_string_lossy()))?;
    tracing::warn!(object = %path.to_string_lossy(),
        "test hook: this successor runs the XDP object at {TEST_OBJECT_ENV}, not its embedded one");
    let _ = TEST_OBJECT.set(Vec::leak(bytes));
    Ok(())
}

#[cfg(not(all(feature = "test-hooks", debug_assertions)))]
pub fn use_test_object() -> Result<(), String> {
    Ok(())
}

/// One map as created: what a program compiled against it relies on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLayout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The shared maps ([`HANDED_MAPS`]) of an object sized for `max_allocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLayouts {
    pub max_allocations: u32,
    pub maps: BTreeMap<String, MapLayout>,
    /// The order the maps' descriptors travel in ([`HANDED_MAPS`] of the build that
    /// wrote this): the receiver pairs descriptors with names by position.
    #[serde(default)]
    pub order: Vec<String>,
}

impl MapLayouts {
    /// As `object`'s definitions say, with the entries the loader sets for
    /// `max_allocations`. A shared map the object lacks is left out (and refused by
    /// [`MapLayouts::incompatible`]).
    pub fn of(object: &[u8], max_allocations: u32) -> Result<Self, String> {
        let parsed =
            aya_obj::Object::parse(object).map_err(|e| format!("parsing the XDP object: {e}"))?;
        let sized: BTreeMap<&str, u32> = map_sizes(max_allocations)
            .into_iter()
            .chain(bandwidth_map_sizes(max_allocations))
            .collect();
        let mut maps = BTreeMap::new();
        for &name in HANDED_MAPS {
            let Some(m) = parsed.maps.get(name) else {
                continue;
            };
            maps.insert(
                name.to_owned(),
                MapLayout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: sized.get(name).copied().unwrap_or(m.max_entries()),
                    flags: m.map_flags(),
                },
            );
        }
        Ok(Self {
            max_allocations,
            maps,
            order: HANDED_MAPS.iter().map(|&n| n.to_owned()).collect(),
        })
    }

    /// Why a program built with `self` cannot run on maps laid out as `running`.
    pub fn incompatible(&self, running: &Self) -> Option<String> {
        // Descriptors are paired with names by position: the same names in the same order.
        if running.order != self.order {
            return Some(format!(
                "the running relay hands its maps over as {:?}, this build takes {:?}",
                running.order, self.order
            ));
        }
        for &name in HANDED_MAPS {
            match (self.maps.get(name), running.maps.get(name)) {
                (Some(ours), Some(theirs)) if ours == theirs => {}
                (None, _) => return Some(format!("this build's program has no map {name}")),
                (_, None) => return Some(format!("the running program has no map {name}")),
                (Some(ours), Some(theirs)) => {
                    return Some(format!(
                        "map {name} changed: running {theirs:?}, this build {ours:?}"
                    ));
                }
            }
        }
        None
    }
}

/// This build's program, loaded but not verified yet: the placeholders of the shared
/// maps wait to be pointed at the running ones ([`Prepared::load_onto`]).
pub struct Prepared {
    ebpf: Ebpf,
}

impl Prepared {
    /// Loads the object (creating its maps, the shared ones with one entry). Needs
    /// CAP_BPF; done before the old process pauses, so a missing capability refuses
    /// early.
    pub fn new() -> Result<Self, XdpError> {
        super::raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        for name in HANDED_MAPS {
            loader.map_max_entries(name, 1);
        }
        let ebpf = loader.load(object()).map_err(XdpError::Load)?;
        Ok(Self { ebpf })
    }

    /// Points every shared map of the program at the running map `handed` names, then
    /// has the program verified. Returns the object, holding the loaded program.
    pub fn load_onto(mut self, handed: &[(&'static str, OwnedFd)]) -> Result<Ebpf, XdpError> {
        for (name, fd) in handed {
            let placeholder = self
                .ebpf
                .map(name)
                .and_then(|m| super::adopt::map_fd(m, name).ok())
                .map(|fd| fd.as_raw_fd())
                .ok_or(XdpError::Counters(super::XdpMapsError::Missing(name)))?;
            // SAFETY: both descriptors are open; the placeholder's number now names the
            // running map (aya's handle keeps owning the number and closes it on drop).
            if unsafe { libc::dup3(fd.as_raw_fd(), placeholder, libc::O_CLOEXEC) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(XdpError::Counters(super::XdpMapsError::Cpus(format!(
                    "pointing {name} at the running map: {e}"
                ))));
            }
        }
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(XdpError::MissingProgram)?
            .try_into()
            .map_err(XdpError::Verify)?;
        super::verify(program)?;
        Ok(self.ebpf)
    }
}

/// `bpf(2)` BPF_LINK_UPDATE (include/uapi/linux/bpf.h).
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
    _rest: [u64; 6],
}

/// Replaces the program of the bpf_link `link` with `program`, atomically: the interface
/// runs the old program up to this call and the new one after it.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> std::io::Result<()> {
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..LinkUpdate::default()
    };
    super::attach::bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

/// `bpf(2)` BPF_LINK_DETACH: takes the link's program off its interface for every
/// holder of the link (Linux 5.9+, as XDP links themselves).
pub fn link_detach(link: BorrowedFd<'_>) -> std::io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr: [u32; 16] = {
        let mut a = [0u32; 16];
        a[0] = link.as_raw_fd() as u32;
        a
    };
    super::attach::bpf(BPF_LINK_DETACH, &attr).map(drop)
}

/// The XDP program's descriptor in `ebpf`.
pub fn program_fd(ebpf: &Ebpf) -> Option<BorrowedFd<'_>> {
    let program: &Xdp = ebpf.program(XDP_PROGRAM)?.try_into().ok()?;
    program.fd().ok().map(|fd| fd.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_matches_itself_and_names_a_changed_map() {
        let ours = MapLayouts::of(OBJECT, 1000).unwrap();
        assert_eq!(ours.maps.len(), HANDED_MAPS.len());
        assert_eq!(ours.incompatible(&ours.clone()), None);
        // Sized for another max_allocations: the hash maps' entries differ.
        let other = MapLayouts::of(OBJECT, 2000).unwrap();
        let why = ours.incompatible(&other).expect("sizes differ");
        assert!(why.contains("changed"), "{why}");
        let mut missing = ours.clone();
        missing.maps.remove(relay_common::PUBLIC_IPS_MAP);
        let why = ours.incompatible(&missing).expect("a map is missing");
        assert!(
            why.contains("running program has no map PUBLIC_IPS"),
            "{why}"
        );
        let mut wider = ours.clone();
        wider
            .maps
            .get_mut(relay_common::ALLOCATIONS_MAP)
            .unwrap()
            .value_size += 8;
        let why = wider.incompatible(&ours).expect("value size differs");
        assert!(why.contains(relay_common::ALLOCATIONS_MAP), "{why}");
    }
}
