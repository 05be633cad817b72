//! Running cargo and other tools with the project's own tool folder on PATH.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_owned()
}

/// Where setup installs bpf-linker and cargo-fuzz: inside the clone, never system-wide.
pub fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

/// PATH with the tool folder first.
pub fn path_with_tools() -> std::ffi::OsString {
    let mut paths = vec![tools_dir().join("bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("paths without ':'")
}

pub struct Cargo {
    cmd: Command,
    shown: String,
}

impl Cargo {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Self {
        Self::with_toolchain(None, args)
    }

    /// `cargo +nightly …`
    pub fn nightly<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Self {
        Self::with_toolchain(Some("nightly"), args)
    }

    fn with_toolchain<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        tc: Option<&str>,
        args: I,
    ) -> Self {
        let mut cmd = Command::new("cargo");
        let mut shown = String::from("cargo");
        if let Some(tc) = tc {
            cmd.arg(format!("+{tc}"));
            shown.push_str(&format!(" +{tc}"));
            // The outer `cargo xtask` pins stable for child processes through these.
            cmd.env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO")
                .env_remove("RUSTC");
        }
        cmd.current_dir(root()).env("PATH", path_with_tools());
        let mut c = Self { cmd, shown };
        c.args(args);
        c
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.shown.push(' ');
        self.shown.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for a in args {
            self.arg(a);
        }
        self
    }

    pub fn dir(&mut self, dir: PathBuf) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(&mut self, k: &str, v: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(k, v);
        self
    }

    pub fn run(&mut self, what: &str) -> Result<()> {
        eprintln!("+ {}", self.shown);
        let status = self
            .cmd
            .status()
            .with_context(|| format!("cannot start `{}`", self.shown))?;
        if !status.success() {
            bail!("{what} failed (`{}` exited with {status})", self.shown);
        }
        Ok(())
    }
}

/// Runs a program and returns its stdout, or None when it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path_with_tools())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} need root (or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN): run as root");
    }
    Ok(())
}

/// Replaces this process with `program args` as root, through sudo when needed.
pub fn exec_as_root(program: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = if is_root() {
        Command::new(program)
    } else {
        eprintln!("the relay loads an XDP program and needs root: using sudo");
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=RUST_LOG").arg(program);
        c
    };
    cmd.args(args);
    // Shown like `Cargo::run` shows cargo: the operator can repeat or tweak it.
    eprintln!("+ {}", shown(&cmd));
    let err = cmd.exec();
    bail!("cannot start {}: {err}", program.display())
}

/// `cmd` as a shell line, quoting only the words that need it.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| shell_word(&w.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_word(w: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !w.is_empty() && w.chars().all(plain) {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::shown;

    #[test]
    fn shown_command_is_a_shell_line() {
        let mut cmd = Command::new("sudo");
        cmd.args([
            "--preserve-env=RUST_LOG",
            "/w/target/release/relay",
            "serve",
            "--listen",
            "127.0.0.1:3478",
            "--log-level",
            "info,relay_user=debug",
            "it's",
            "",
        ]);
        assert_eq!(
            shown(&cmd),
            "sudo --preserve-env=RUST_LOG /w/target/release/relay serve --listen 127.0.0.1:3478 \
             --log-level info,relay_user=debug 'it'\\''s' ''"
        );
    }
}
