//! `todo-scan`: a third-party worker kind in Rust. It walks the worktree
//! (through WASI: it sees nothing else), lists every line that carries one
//! of the step's markers (`command`, default `TODO FIXME`), keeps the list as
//! an artifact, reports progress, and suggests a follow-up when it found any.
//! It asks the host for no programs at all.

use std::fs;
use std::path::{Path, PathBuf};

use baa_worker_sdk::*;
use serde::Serialize;

/// Files larger than this are not read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// A progress event every this many files.
const PROGRESS_EVERY: usize = 200;

struct TodoScan;

#[derive(Serialize)]
struct Found {
    file: String,
    line: usize,
    text: String,
}

#[derive(Serialize)]
struct Progress {
    files: usize,
    found: usize,
}

impl Worker for TodoScan {
    fn execute(step: Step) -> Result<WorkerOutcome, ExecuteError> {
        let markers: Vec<String> = step
            .command
            .as_deref()
            .unwrap_or("TODO FIXME")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if markers.is_empty() {
            return Err(ExecuteError::InvalidRequest(
                "`command` lists the markers to look for, e.g. `TODO FIXME`".into(),
            ));
        }

        let mut files = Vec::new();
        collect(Path::new("."), &mut files)
            .map_err(|e| ExecuteError::Failed(format!("cannot walk the worktree: {e}")))?;
        files.sort();

        let mut found = Vec::new();
        for (n, path) in files.iter().enumerate() {
            if n > 0 && n % PROGRESS_EVERY == 0 {
                progress(
                    "scanning",
                    &Progress {
                        files: n,
                        found: found.len(),
                    },
                );
            }
            let Ok(text) = fs::read_to_string(path) else {
                continue; // binary or unreadable
            };
            let file = path.strip_prefix(".").unwrap_or(path).display().to_string();
            for (i, line) in text.lines().enumerate() {
                if markers.iter().any(|m| line.contains(m.as_str())) {
                    found.push(Found {
                        file: file.clone(),
                        line: i + 1,
                        text: line.trim().to_string(),
                    });
                }
            }
        }

        let report = render(&markers, &found);
        declare_artifact(
            "todos.md",
            "Marked lines in the worktree",
            report.as_bytes(),
        )
        .map_err(|e| ExecuteError::Failed(format!("cannot store the report: {e:?}")))?;
        let summary = format!(
            "{} marked line(s) ({}) in {} file(s) scanned",
            found.len(),
            markers.join(", "),
            files.len()
        );
        if step.checkpoints_enabled {
            let _ = capture_checkpoint("summary", &summary, None);
        }
        let outcome = WorkerOutcome::completed(summary);
        Ok(if found.is_empty() {
            outcome
        } else {
            outcome.with_followup(
                "address-todos",
                "codex",
                &format!(
                    "resolve the {} marked line(s) listed in todos.md",
                    found.len()
                ),
            )
        })
    }
}

/// Every regular file under `dir`, skipping `.git` and symlinks.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() && entry.file_name() != ".git" {
            collect(&path, out)?;
        } else if kind.is_file() && entry.metadata()?.len() <= MAX_FILE_BYTES {
            out.push(path);
        }
    }
    Ok(())
}

fn render(markers: &[String], found: &[Found]) -> String {
    let mut report = format!("# Lines marked {}\n\n", markers.join(", "));
    for f in found {
        report.push_str(&format!("- `{}:{}` {}\n", f.file, f.line, f.text));
    }
    if found.is_empty() {
        report.push_str("None.\n");
    }
    report
}

export_worker!(TodoScan);
