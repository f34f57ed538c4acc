//! Before the turn: `codex doctor --json`, run confined as codex itself
//! will be, says whether its provider's key is set and its provider is
//! reachable through the step's network grant. A problem ends the step at
//! once instead of after its timeout. A configuration that does not load is
//! left to `codex exec` (its error is the better one); a codex without
//! `doctor` (or whose report is unreadable) is simply not checked.

use baa_worker_sdk::*;
use serde_json::{json, Value};

use crate::diagnose::{Finding, StartUp};
use crate::outcome::Provider;

/// What the pre-flight found.
#[derive(Default)]
pub struct Preflight {
    pub provider: Option<Provider>,
    pub problem: Option<Finding>,
}

/// How long `codex doctor` may take.
const DOCTOR_MS: u64 = 20_000;

pub fn check() -> Preflight {
    let doctor = Command::new("codex", ["doctor", "--json"])
        .stdin(Vec::new())
        .timeout_ms(DOCTOR_MS);
    let report = match run(&doctor) {
        Ok(done) => serde_json::from_slice::<Value>(&done.stdout).ok(),
        Err(_) => None,
    };
    let Some(report) = report.filter(|r| r["checks"].is_object()) else {
        emit(
            Level::Info,
            "codex.preflight",
            "skipped: this codex has no readable `doctor --json` report",
            None,
        );
        return Preflight::default();
    };
    let found = read(&report);
    emit(
        if found.problem.is_some() {
            Level::Warn
        } else {
            Level::Info
        },
        "codex.preflight",
        &match (&found.problem, &found.provider) {
            (Some(_), _) => "codex doctor found a problem; the turn does not start".to_string(),
            (None, Some(p)) => format!("configuration loads; provider {} reachable", p.url),
            (None, None) => "configuration loads".to_string(),
        },
        Some(&json!({ "provider": found.provider.as_ref().map(|p| &p.url) }).to_string()),
    );
    found
}

/// The checks that decide, from a doctor report.
fn read(report: &Value) -> Preflight {
    let check = |id: &str| &report["checks"][id];
    let failed = |id: &str| check(id)["status"] == "fail";
    let said = |id: &str| {
        let c = check(id);
        let details: Vec<String> = (c["details"].as_object().into_iter().flatten())
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
            .collect();
        format!(
            "{} ({})",
            c["summary"].as_str().unwrap_or("failed"),
            details.join("; ")
        )
    };
    let provider = (check("network.provider_reachability")["details"].as_object())
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .find_map(|v| v.split_whitespace().find(|w| w.starts_with("http")))
        .map(|url| Provider {
            url: origin(url),
            port: port_of(url),
        });
    // A configuration that does not load is left to `codex exec`, whose
    // start-up error says why (doctor's does not: "entity not found").
    let problem = if failed("config.load") {
        None
    } else if failed("auth.credentials") && said("auth.credentials").contains("env var") {
        Some(Finding::StartUp {
            problem: StartUp::MissingVariable,
            line: said("auth.credentials"),
        })
    } else if failed("network.provider_reachability")
        && unreachable(check("network.provider_reachability"))
    {
        Some(Finding::NoNetwork {
            line: said("network.provider_reachability"),
        })
    } else {
        None
    };
    Preflight { provider, problem }
}

/// Whether a failed reachability check failed to connect at all (a refused
/// or filtered connection, no name), not merely got an HTTP
/// answer it did not expect from a probed route.
fn unreachable(check: &Value) -> bool {
    (check["details"].as_object().into_iter().flatten())
        .filter_map(|(_, v)| v.as_str())
        .map(str::to_lowercase)
        .any(|v| {
            // Not a timeout alone: that may pass.
            v.contains("connect failed") || v.contains("dns") || v.contains("refused")
        })
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

/// The TCP port a URL connects to.
fn port_of(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    match host_port.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    }
}
