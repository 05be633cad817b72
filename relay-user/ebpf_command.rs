// The nightly cargo command that builds relay-ebpf for bpfel-unknown-none: `include!`d by
// relay-user's build script (the embedded object) and by the tests' second build with
// another feature (tests/src/bumped_ebpf.rs), so both build it the same way.

/// `cargo build` of relay-ebpf into `target_dir` for the host `arch`, with `features`.
fn ebpf_command(
    root: &std::path::Path,
    target_dir: &std::path::Path,
    arch: &str,
    features: &[&str],
) -> Result<std::process::Command, String> {
    let tools = root.join("target/tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools];
    paths.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(paths).map_err(|e| e.to_string())?;

    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root.join("relay-ebpf"))
        .env("PATH", path);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // The outer cargo's settings describe the host build; none of them apply here.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTC") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env_remove("RUSTFLAGS").env_remove("RUSTUP_TOOLCHAIN");
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    Ok(cmd)
}
