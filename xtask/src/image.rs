//! `cargo xtask image`: the relay as a container image, built with buildah from scratch
//! and nothing pulled from a registry (none is reachable from CI, and a base image would
//! bring a distribution to patch for a program that needs five files of it).
//!
//! The image holds the `relay` binary (debug info stripped, symbols kept for backtraces),
//! `nft` (the `[xdp] forwarding = "auto"` guard runs it), the shared libraries both link as
//! `ldd` resolves them on this host, the dynamic loader, the CA bundle (`relay stun --ca`
//! falls back to the system roots), a two-line nsswitch.conf and the example config. The
//! build host's glibc is the image's: the binary was linked against it.
//!
//! The podman test (tests/tests/container.rs) builds its image through this same code
//! with `--binary target/debug/relay`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::util::root;

/// Where the relay lives in the image; the entrypoint.
const RELAY_PATH: &str = "usr/local/bin/relay";
/// The config `serve` reads unless the command says otherwise (Kubernetes mounts its
/// ConfigMap here).
const CONFIG_PATH: &str = "etc/relay/relay.toml";
/// Debian's CA bundle; copied when present.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// glibc's built-in NSS (files, dns) reads this for the relay's few name lookups.
const NSSWITCH: &str = "hosts: files dns\npasswd: files\ngroup: files\n";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The relay binary to put in the image; default: build the release one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Image name and tag.
    #[arg(long, default_value = concat!("localhost/relay:", env!("CARGO_PKG_VERSION")))]
    pub tag: String,
}

pub fn run(args: ImageArgs) -> Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => {
            crate::setup::toolchain()?;
            crate::build()?;
            root().join("target/release/relay")
        }
    };
    let started = Instant::now();
    build(&binary, &args.tag)?;
    println!(
        "built image {} from {} in {:.1} s",
        args.tag,
        binary.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stages the image's files in a private directory under target/, then commits them as
/// one layer on an empty (`scratch`) container.
pub fn build(binary: &Path, tag: &str) -> Result<()> {
    if !binary.exists() {
        bail!("{} is missing: build it first", binary.display());
    }
    let staging = Staging::new()?;
    stage(binary, &staging.0)?;
    let ctr = Buildah::from_scratch()?;
    ctr.copy(&staging.0)?;
    ctr.config(&[
        "--entrypoint",
        &format!("[\"/{RELAY_PATH}\"]"),
        "--cmd",
        &format!("serve --config /{CONFIG_PATH}"),
        // No colour codes in `kubectl logs` and podman's log.
        "--env",
        "NO_COLOR=1",
        "--label",
        &format!(
            "org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
        "--label",
        "org.opencontainers.image.title=relay",
    ])?;
    ctr.commit(tag)
}

fn stage(binary: &Path, dir: &Path) -> Result<()> {
    let relay = dir.join(RELAY_PATH);
    create_parent(&relay)?;
    // Debug info is most of a debug or `debug = 1` build; the symbols stay for backtraces.
    capture(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&relay)
            .arg(binary),
        "strip (binutils)",
    )?;
    let nft = which("nft").context("nft is missing: `apt-get install nftables`")?;
    copy_file(&nft, &dir.join("usr/sbin/nft"))?;
    for program in [binary, nft.as_path()] {
        for lib in linked_libraries(program)? {
            let inside = dir.join(lib.strip_prefix("/").expect("ldd paths are absolute"));
            // The same library for both programs: copied once.
            if !inside.exists() {
                copy_file(&lib, &inside)?;
            }
        }
    }
    if Path::new(CA_BUNDLE).exists() {
        copy_file(Path::new(CA_BUNDLE), &dir.join(&CA_BUNDLE[1..]))?;
    }
    write(&dir.join("etc/nsswitch.conf"), NSSWITCH)?;
    copy_file(
        &root().join("deploy/relay.example.toml"),
        &dir.join(CONFIG_PATH),
    )
}

/// The absolute paths `ldd` resolves for `program`, the dynamic loader included.
fn linked_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("{} cannot run as built", program.display()))
}

/// The files in `ldd`'s output; a library it did not find is an error naming it.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("ldd: {}", line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the loader as
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// `program` on PATH (nft is in /usr/sbin, which a non-root PATH may lack).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Copies the file `from` resolves to (libraries are often symlinks) to `to`.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    create_parent(to)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    create_parent(path)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().expect("a file inside the staging dir");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

fn capture(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {what}: is it installed? (`cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The staging directory, removed when the build ends (also on error).
struct Staging(PathBuf);

impl Staging {
    fn new() -> Result<Self> {
        let dir = root().join(format!("target/image-staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A buildah working container, removed when dropped (commit removes it as well).
struct Buildah(String);

impl Buildah {
    fn from_scratch() -> Result<Self> {
        let id = capture(
            Command::new("buildah").args(["from", "scratch"]),
            "buildah from scratch",
        )?;
        Ok(Self(id))
    }

    fn copy(&self, dir: &Path) -> Result<()> {
        // The directory's contents land at / of the image.
        capture(
            Command::new("buildah")
                .args(["copy", &self.0])
                .arg(dir)
                .arg("/"),
            "buildah copy",
        )
        .map(drop)
    }

    fn config(&self, args: &[&str]) -> Result<()> {
        capture(
            Command::new("buildah")
                .arg("config")
                .args(args)
                .arg(&self.0),
            "buildah config",
        )
        .map(drop)
    }

    fn commit(&self, tag: &str) -> Result<()> {
        capture(
            Command::new("buildah").args(["commit", "--quiet", &self.0, tag]),
            "buildah commit",
        )
        .map(drop)
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["rm", &self.0]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1c3f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f7d61b02000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7d60c1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f7d61b36000)
";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let text = "\tlibnftables.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        let e = parse_ldd(text).unwrap_err().to_string();
        assert!(e.contains("libnftables.so.1"), "{e}");
    }
}
