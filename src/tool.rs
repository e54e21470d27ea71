//! Running the external tools bootyard builds on (mkfs.ext4, tune2fs, grub-mkimage, apt-get,
//! dpkg-deb): one place that turns "not installed", "could not start" and "exited non-zero"
//! into errors that name the tool, the Debian package to install, and what it said.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not installed (Debian: apt-get install {package})")]
    Missing { tool: String, package: &'static str },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {tool}")]
    Start {
        tool: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command, package: &'static str) -> Result<Output, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ToolError::Missing {
                tool: tool.clone(),
                package,
            }
        } else {
            ToolError::Start {
                tool: tool.clone(),
                source,
            }
        }
    })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_tool_and_what_went_wrong() {
        let e = run(&mut Command::new("bootyard-no-such-tool"), "nothing").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bootyard-no-such-tool is not installed (Debian: apt-get install nothing)"
        );
        let e = run(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            "dash",
        )
        .unwrap_err();
        assert!(
            matches!(&e, ToolError::Failed { stderr, .. } if stderr == "oops"),
            "{e}"
        );
        assert!(run(&mut Command::new("true"), "coreutils").is_ok());
    }
}
