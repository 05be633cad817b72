//! Running something with io_uring forbidden, as a seccomp policy or a container runtime
//! forbids it: a filter that fails io_uring_setup/enter/register with EPERM, installed on a
//! fresh thread. Processes that thread spawns inherit the filter (seccomp is copied on
//! fork and kept across exec); the test's other threads are untouched.

const IO_URING_SYSCALLS: [u32; 3] = [
    libc::SYS_io_uring_setup as u32,
    libc::SYS_io_uring_enter as u32,
    libc::SYS_io_uring_register as u32,
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

// Classic BPF opcodes (linux/filter.h).
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JMP_JEQ_K,
        jt,
        jf,
        k,
    }
}

/// Installs the filter on the calling thread (irreversible for it).
fn deny_io_uring_here() -> std::io::Result<()> {
    let errno = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32);
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, ARCH),
        // Another architecture's calling convention: not ours to judge.
        jump(AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_LD_W_ABS, NR),
    ];
    for (i, nr) in IO_URING_SYSCALLS.iter().enumerate() {
        // Match: skip the remaining tests and the ALLOW to reach the ERRNO return.
        let left = (IO_URING_SYSCALLS.len() - 1 - i) as u8;
        prog.push(jump(*nr, left + 1, 0));
    }
    prog.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(BPF_RET_K, errno));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with documented arguments; `fprog` points at a live program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` on a new thread on which io_uring is forbidden; what `f` spawns is too.
pub fn without_io_uring<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            deny_io_uring_here()?;
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("thread without io_uring panicked"))?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn io_uring_setup_fails_with_eperm_under_the_filter() {
        let r = super::without_io_uring(|| {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup with a zeroed params struct of the right size.
            let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
            (rc, std::io::Error::last_os_error().raw_os_error())
        })
        .expect("install filter");
        assert_eq!(r, (-1, Some(libc::EPERM)));
    }
}
