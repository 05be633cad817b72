//! Running the system tools the harness needs (ip, nft, ethtool) with errors that say
//! what was run and what it printed.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{cmd}`: {source} (is it installed? `cargo xtask setup` installs it)")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args…`, returns stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, CmdError> {
    run_input(program, args, None)
}

/// Like [`run`], feeding `input` on stdin (for `nft -f -`).
pub fn run_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, CmdError> {
    use std::io::Write;
    let cmd = format!("{program} {}", args.join(" "));
    let mut c = Command::new(program);
    c.args(args);
    let out: Output = if let Some(input) = input {
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|source| CmdError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        child.wait_with_output().map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?
    } else {
        c.output().map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?
    };
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
