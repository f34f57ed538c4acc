//! What a confined process may execute. A kind's subprocesses (and the
//! host's own git) may execute only the programs granted to them and what
//! those need to start: the ELF interpreter, a `#!` interpreter, git's own
//! helpers. Programs a repository configures (filters, hooks, pagers, …)
//! are then refused by the kernel, whatever the repository says.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Directories where program names are resolved. The host's own `PATH` is
/// never consulted, and neither is anything inside a worktree.
pub const SYSTEM_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// File names of programs whose purpose is to run other programs: a kind
/// granted one of them may execute whatever it can read.
const COMMAND_RUNNERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "busybox", "env", "xargs",
];

/// Where git keeps the helpers it executes itself (`git --exec-path`).
const GIT_EXEC_PATHS: &[&str] = &[
    "/usr/lib/git-core",
    "/usr/libexec/git-core",
    "/usr/local/libexec/git-core",
];

/// Whether granting `program` (a name or path, and its resolved path)
/// means granting every program: it is a shell or a command runner.
pub fn runs_anything(name: &str, resolved: &Path) -> bool {
    let base = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let canonical = resolved.canonicalize().unwrap_or_else(|_| resolved.into());
    [base(Path::new(name)), base(resolved), base(&canonical)]
        .iter()
        .any(|b| COMMAND_RUNNERS.contains(&b.as_str()))
}

/// The files that must be executable for `program` to start: the program
/// (as its canonical path: Landlock checks the file, not the link), its
/// ELF interpreter or its `#!` interpreter (followed twice, for
/// `#!/usr/bin/env python3`), and git's helper directory for git.
pub fn needed_to_run(program: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    add(program, &mut out, 0);
    let is_git = program.file_name().and_then(|n| n.to_str()) == Some("git");
    if is_git {
        out.extend(
            GIT_EXEC_PATHS
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.is_dir()),
        );
    }
    out.sort();
    out.dedup();
    out
}

fn add(program: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(canonical) = program.canonicalize() else {
        return;
    };
    out.push(canonical.clone());
    if depth >= 2 {
        return;
    }
    let mut head = [0u8; 4096];
    let Ok(n) = std::fs::File::open(&canonical).and_then(|mut f| f.read(&mut head)) else {
        return;
    };
    let head = &head[..n];
    if let Some(interpreter) = elf_interpreter(&canonical, head) {
        add(&interpreter, out, depth + 1);
    } else if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let Some(interpreter) = words.next().map(PathBuf::from) else {
            return;
        };
        let is_env = interpreter.file_name().and_then(|n| n.to_str()) == Some("env");
        add(&interpreter, out, depth + 1);
        if is_env {
            if let Some(target) = words.find(|w| !w.starts_with('-')) {
                if let Some(found) = SYSTEM_PATH
                    .iter()
                    .map(|dir| Path::new(dir).join(target))
                    .find(|p| p.is_file())
                {
                    add(&found, out, depth + 1);
                }
            }
        }
    }
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file, read from its
/// program headers (only they and the path are read, not the file).
fn elf_interpreter(path: &Path, head: &[u8]) -> Option<PathBuf> {
    use std::os::unix::fs::FileExt;
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(head, 0x20)?;
    let phentsize = u16_at(head, 0x36)? as usize;
    let phnum = (u16_at(head, 0x38)? as usize).min(64);
    if phentsize < 40 {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let mut table = vec![0u8; phnum * phentsize];
    file.read_exact_at(&mut table, phoff).ok()?;
    for i in 0..phnum {
        let ph = i * phentsize;
        if u32_at(&table, ph)? == 3 {
            // PT_INTERP: p_offset at +8, p_filesz at +32.
            let offset = u64_at(&table, ph + 8)?;
            let size = (u64_at(&table, ph + 32)? as usize).min(4096);
            let mut raw = vec![0u8; size];
            file.read_exact_at(&mut raw, offset).ok()?;
            let raw = raw.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(String::from_utf8_lossy(raw).into_owned()));
        }
    }
    None
}
