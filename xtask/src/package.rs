//! `cargo xtask package`: the Debian package of the relay, built with `dpkg-deb` from a
//! staged tree (no cargo-deb: dpkg-deb and dpkg-shlibdeps come with Debian's dpkg and
//! dpkg-dev, nothing to compile), and the install, check and purge cycle that
//! `cargo xtask test` runs on it.
//!
//! What it holds: `/usr/bin/relay` (the release build, debug info stripped),
//! `/usr/lib/systemd/system/relay.service` (`deploy/relay.service` with the installed
//! paths), `/etc/relay/relay.toml` (a conffile, from `deploy/relay.example.toml`), the
//! Grafana dashboard and the maintainer scripts of `deploy/debian/`.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;

use crate::util::root;

const NAME: &str = "relay";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const BINARY: &str = "usr/bin/relay";
const UNIT: &str = "usr/lib/systemd/system/relay.service";
const CONFIG: &str = "etc/relay/relay.toml";
const DOC: &str = "usr/share/doc/relay";
const DASHBOARD: &str = "usr/share/relay/grafana/relay.json";
/// Where the source unit expects the binary (a `make install`-style copy).
const SOURCE_BINARY: &str = "/usr/local/bin/relay";
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

#[derive(Args)]
pub struct PackageArgs {
    /// Package this binary instead of building the release one.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Then install it, check it and purge it (root; what `cargo xtask test` does).
    #[arg(long)]
    check: bool,
}

pub fn run(args: PackageArgs) -> Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => {
            crate::build()?;
            root().join("target/release/relay")
        }
    };
    let deb = build(&binary)?;
    if args.check {
        install_check(&deb)?;
    }
    Ok(())
}

/// Builds `target/package/relay_VERSION_ARCH.deb` around `binary`; returns its path.
pub fn build(binary: &Path) -> Result<PathBuf> {
    let out = root().join("target/package");
    let stage = out.join("root");
    let _ = fs::remove_dir_all(&stage);
    let result = stage_tree(binary, &stage).and_then(|arch| {
        let deb = out.join(format!("{NAME}_{VERSION}_{arch}.deb"));
        run_tool(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&stage)
                .arg(&deb),
        )?;
        Ok(deb)
    });
    // The staged copy of the binary is tens of MB: only the .deb stays.
    let _ = fs::remove_dir_all(&stage);
    let deb = result?;
    println!("built {}", deb.display());
    Ok(deb)
}

/// Lays out the package's files and `DEBIAN/` under `stage`; returns the architecture.
fn stage_tree(binary: &Path, stage: &Path) -> Result<String> {
    let src = root();
    ensure!(
        binary.is_file(),
        "{} is missing: build it first (`cargo xtask build`)",
        binary.display()
    );
    let bin = put(stage, BINARY, &[], 0o755)?;
    // The release profile keeps line tables for backtraces (debug = 1): tens of MB a
    // server package need not carry. Symbols stay, so a backtrace still names functions.
    run_tool(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&bin),
    )?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;

    let unit = fs::read_to_string(src.join("deploy/relay.service"))
        .context("reading deploy/relay.service")?;
    put(stage, UNIT, installed_unit(&unit)?.as_bytes(), 0o644)?;
    // Secrets go in there: not world-readable from the moment dpkg unpacks it (the
    // postinst gives it to the relay's group).
    let config = fs::read(src.join("deploy/relay.example.toml"))
        .context("reading deploy/relay.example.toml")?;
    put(stage, CONFIG, &config, 0o640)?;
    put(
        stage,
        DASHBOARD,
        &fs::read(src.join("deploy/grafana/relay.json"))?,
        0o644,
    )?;
    put(
        stage,
        &format!("{DOC}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;

    for script in MAINTAINER_SCRIPTS {
        let text = fs::read(src.join("deploy/debian").join(script))
            .with_context(|| format!("reading deploy/debian/{script}"))?;
        put(stage, &format!("DEBIAN/{script}"), &text, 0o755)?;
    }
    put(
        stage,
        "DEBIAN/conffiles",
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    let arch = run_tool(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let control = Control {
        arch: &arch,
        depends: shared_library_depends(&bin, &root().join("target/package"))?,
        installed_kib: installed_size_kib(stage)?,
        maintainer: maintainer(),
    };
    put(stage, "DEBIAN/control", control.text().as_bytes(), 0o644)?;
    Ok(arch)
}

/// Writes `bytes` to `stage/rel` (directories 0755) with `mode`.
fn put(stage: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let path = stage.join(rel);
    let mut dir = path.parent().expect("a file in a directory").to_owned();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    while dir.starts_with(stage) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        dir.pop();
    }
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(path)
}

/// `deploy/relay.service` as installed: the packaged binary's path, and its install
/// instructions (useradd, install -m …) replaced by what the package did.
fn installed_unit(unit: &str) -> Result<String> {
    // The source unit opens with its install steps, ended by a lone `#`.
    let (head, body) = unit
        .split_once("\n#\n")
        .context("deploy/relay.service no longer opens with its install steps ended by `#`")?;
    ensure!(
        head.contains("useradd"),
        "deploy/relay.service: the opening comment no longer holds the install steps"
    );
    let body = body
        .replace(SOURCE_BINARY, &format!("/{BINARY}"))
        .replace("(useradd above)", "(the package's postinst made it)");
    ensure!(
        !body.contains("/usr/local"),
        "deploy/relay.service names a /usr/local path the package does not install"
    );
    ensure!(
        body.contains(&format!("ExecStart=/{BINARY} serve")),
        "deploy/relay.service: no ExecStart of {SOURCE_BINARY} serve"
    );
    Ok(format!("{UNIT_HEAD}#\n{body}"))
}

const UNIT_HEAD: &str = "\
# systemd unit for relay, installed by its Debian package (`cargo xtask package`, from
# deploy/relay.service). The package made the system user and group `relay` and the
# config /etc/relay/relay.toml (root:relay 0640, a conffile); it starts nothing. Put the
# host's addresses, NICs and secrets in the config, then:
#   relay check --config /etc/relay/relay.toml && systemctl enable --now relay
";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: relay

Files: *
Copyright: the relay authors
License: MIT or Apache-2.0
";

/// The control file's fields.
struct Control<'a> {
    arch: &'a str,
    depends: String,
    installed_kib: u64,
    maintainer: String,
}

impl Control<'_> {
    fn text(&self) -> String {
        format!(
            "Package: {NAME}\n\
             Version: {VERSION}\n\
             Architecture: {arch}\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {kib}\n\
             Depends: {depends}, passwd\n\
             Recommends: nftables\n\
             Section: net\n\
             Priority: optional\n\
             Description: TURN relay with an XDP data path\n \
             A TURN server (RFC 8656) for WebRTC media: UDP, TCP and TLS clients, long-term\n \
             and TURN REST credentials, peer policy, quotas, drain and upgrade without\n \
             dropping calls. With XDP, media between allocated clients and their peers is\n \
             forwarded in the kernel. Admin endpoint with Prometheus metrics and a Grafana\n \
             dashboard (/usr/share/relay/grafana).\n",
            arch = self.arch,
            maintainer = self.maintainer,
            kib = self.installed_kib,
            depends = self.depends,
        )
    }
}

/// Debian's own variables for who builds a package, as dch reads them.
fn maintainer() -> String {
    let name = std::env::var("DEBFULLNAME").unwrap_or_else(|_| "relay builders".to_owned());
    let email = std::env::var("DEBEMAIL").unwrap_or_else(|_| "root@localhost".to_owned());
    format!("{name} <{email}>")
}

/// `Depends` for the shared libraries `binary` links, from dpkg-shlibdeps (which wants a
/// `debian/control` in its working directory: a throwaway one under `scratch`).
fn shared_library_depends(binary: &Path, scratch: &Path) -> Result<String> {
    let dir = scratch.join("shlibdeps");
    fs::create_dir_all(dir.join("debian"))?;
    fs::write(
        dir.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let out = run_tool(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", binary.display()))
            .current_dir(&dir),
    );
    let _ = fs::remove_dir_all(&dir);
    let out = out.context("dpkg-shlibdeps is in dpkg-dev (`cargo xtask setup` installs it)")?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("dpkg-shlibdeps said no shlibs:Depends: {out}"))
}

/// What the files take once installed, in KiB as the control field counts it.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

/// Runs `cmd`; its stdout, or an error with the command and its stderr.
fn run_tool(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs `deb` with `dpkg -i` (twice: the second run is an upgrade in place that must
/// keep an edited conffile), runs `relay check` on the installed config as the unit would
/// (as user `relay`) and `systemd-analyze verify` on the installed unit, then purges the
/// package and checks nothing of it is left: files, the user, the group, the override.
/// Purges also when a check fails. Refuses to touch a host that already has a relay
/// package, user or config.
pub fn install_check(deb: &Path) -> Result<()> {
    crate::util::require_root("installing the package")?;
    ensure!(
        !installed()? && getent("passwd")?.is_none() && !Path::new("/etc/relay").exists(),
        "this host already has a relay package, user or /etc/relay: the package check \
         installs and purges them, run it on a throwaway host or container"
    );
    println!("package check: dpkg -i {}", deb.display());
    let checked = dpkg(&["-i"], deb).and_then(|()| installed_checks(deb));
    println!("package check: dpkg --purge {NAME}");
    let purged = dpkg(&["--purge", NAME], Path::new("")).and_then(|()| purged_checks());
    checked.context("the installed package")?;
    purged.context("purging the package")?;
    println!(
        "package check: {} installs, checks and purges cleanly",
        deb.display()
    );
    Ok(())
}

fn dpkg(args: &[&str], deb: &Path) -> Result<()> {
    let mut cmd = Command::new("dpkg");
    // Never a conffile question: the check runs without a terminal.
    cmd.args(["--force-confdef", "--force-confold"]).args(args);
    if !deb.as_os_str().is_empty() {
        cmd.arg(deb);
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    let out = run_tool(&mut cmd)?;
    print!("{out}");
    Ok(())
}

fn installed_checks(deb: &Path) -> Result<()> {
    ensure!(
        installed()?,
        "dpkg -i succeeded but {NAME} is not installed"
    );
    for f in [BINARY, UNIT, CONFIG, DASHBOARD] {
        ensure!(Path::new("/").join(f).is_file(), "/{f} is missing");
    }
    ensure!(getent("passwd")?.is_some(), "no user relay after install");
    let gid: u32 = getent("group")?
        .and_then(|l| l.split(':').nth(2).and_then(|g| g.parse().ok()))
        .context("no group relay after install")?;
    let meta = fs::metadata(Path::new("/").join(CONFIG))?;
    ensure!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777) == (0, gid, 0o640),
        "/{CONFIG} is {}:{} {:o}, not root:relay 0640",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    );
    // As the unit's ExecStartPre runs it: as the relay's user, which must be able to
    // read the config.
    let check = run_tool(Command::new("runuser").args([
        "-u",
        NAME,
        "--",
        &format!("/{BINARY}"),
        "check",
        "--config",
        &format!("/{CONFIG}"),
    ]))?;
    print!("{check}");
    verify_unit()?;

    // A reinstall is an upgrade in place: postinst again (user exists, override set),
    // and an edited conffile is kept.
    let edited = "\n# edited by the operator\n";
    let config = Path::new("/").join(CONFIG);
    let mut text = fs::read_to_string(&config)?;
    text.push_str(edited);
    fs::write(&config, &text)?;
    dpkg(&["-i"], deb)?;
    ensure!(
        fs::read_to_string(&config)?.ends_with(edited),
        "reinstalling replaced the edited /{CONFIG}"
    );
    Ok(())
}

/// `systemd-analyze verify` on the installed unit: it checks the unit offline (no
/// running systemd needed) and that its commands exist. Skipped, and said so, on hosts
/// without systemd.
fn verify_unit() -> Result<()> {
    let unit = format!("/{UNIT}");
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", &unit]);
    match cmd.stdin(Stdio::null()).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("package check: no systemd-analyze on this host, unit not verified");
            Ok(())
        }
        Err(e) => Err(e).context("running systemd-analyze"),
        Ok(out) => {
            // verify exits 0 with warnings on stderr; any line about our unit is a fault.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ours: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("relay.service"))
                .collect();
            ensure!(
                out.status.success() && ours.is_empty(),
                "systemd-analyze verify {unit} ({}): {stderr}",
                out.status
            );
            println!("package check: systemd-analyze verify {unit}: ok");
            Ok(())
        }
    }
}

fn purged_checks() -> Result<()> {
    ensure!(
        !installed()?,
        "{NAME} is still installed after dpkg --purge"
    );
    let left: Vec<String> = [BINARY, UNIT, CONFIG, DASHBOARD, DOC, "etc/relay"]
        .iter()
        .map(|f| Path::new("/").join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    ensure!(left.is_empty(), "left after purge: {left:?}");
    ensure!(getent("passwd")?.is_none(), "user relay left after purge");
    ensure!(getent("group")?.is_none(), "group relay left after purge");
    let overrides = run_tool(Command::new("dpkg-statoverride").arg("--list"))?;
    ensure!(
        !overrides.contains("/etc/relay"),
        "statoverride left after purge: {overrides}"
    );
    Ok(())
}

fn installed() -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", NAME])
        .output()
        .context("running dpkg-query")?;
    // Unknown to dpkg: exit 1. Known: "installed", "config-files", "not-installed", …
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout) != "not-installed")
}

/// The `relay` entry of a name service database (`passwd`, `group`).
fn getent(db: &str) -> Result<Option<String>> {
    let out = Command::new("getent")
        .args([db, NAME])
        .output()
        .context("running getent")?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_unit_runs_the_packaged_binary() {
        let unit = fs::read_to_string(root().join("deploy/relay.service")).unwrap();
        let installed = installed_unit(&unit).unwrap();
        assert!(installed.starts_with(UNIT_HEAD), "{installed}");
        assert!(!installed.contains("useradd") && !installed.contains("/usr/local"));
        for line in [
            "ExecStartPre=/usr/bin/relay check --config /etc/relay/relay.toml",
            "ExecStart=/usr/bin/relay serve --config /etc/relay/relay.toml",
            "User=relay",
        ] {
            assert!(installed.lines().any(|l| l == line), "{line}:\n{installed}");
        }
    }

    #[test]
    fn the_control_file_has_the_fields_dpkg_wants() {
        let c = Control {
            arch: "amd64",
            depends: "libc6 (>= 2.34)".into(),
            installed_kib: 12,
            maintainer: "A <a@b>".into(),
        }
        .text();
        assert!(c.contains("\nDepends: libc6 (>= 2.34), passwd\n"), "{c}");
        // Continuation lines of Description start with a space; none is empty.
        let description = c.split_once("Description: ").unwrap().1;
        assert!(
            description
                .lines()
                .skip(1)
                .all(|l| l.starts_with(' ') && l.len() > 1),
            "{c}"
        );
        assert!(c.ends_with('\n'));
    }
}
