//! Grant negotiation, a pure function: what a kind requests against what
//! the operator grants decides whether its step runs or is blocked. The
//! policy itself (programs resolved on this machine) is
//! `ExecPolicy::intersect`.

use crate::capabilities::subprocess::policy::is_never_passed;
use crate::config::{Capabilities, KindGrant};

/// Whether a kind's step may run under its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Negotiated {
    /// Everything it requests is granted.
    Run,
    /// It requests variables no subprocess ever gets: the kind is broken.
    NeverPassed(Vec<String>),
    /// It requests more than the grant gives (a new version asking for
    /// more, say): blocked until the operator widens the grant.
    Blocked(Capabilities),
}

/// Negotiate `requested` against `granted`.
pub(crate) fn negotiate(requested: &Capabilities, granted: &KindGrant) -> Negotiated {
    let never: Vec<String> = requested
        .env
        .iter()
        .filter(|e| is_never_passed(e))
        .cloned()
        .collect();
    if !never.is_empty() {
        return Negotiated::NeverPassed(never);
    }
    let missing = granted.missing(requested);
    if missing.is_empty() {
        Negotiated::Run
    } else {
        Negotiated::Blocked(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(programs: &[&str], env: &[&str], network: bool) -> Capabilities {
        Capabilities {
            programs: programs.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            network,
        }
    }

    #[test]
    fn a_request_within_its_grant_runs() {
        let granted = KindGrant {
            programs: vec!["/usr/bin/git".into(), "sh".into()],
            env: vec!["LANG".into()],
            ..Default::default()
        };
        assert_eq!(
            negotiate(&request(&["git"], &["LANG"], false), &granted),
            Negotiated::Run
        );
        assert_eq!(
            negotiate(&Capabilities::default(), &KindGrant::default()),
            Negotiated::Run
        );
    }

    #[test]
    fn a_request_beyond_its_grant_is_blocked_on_exactly_what_is_missing() {
        let granted = KindGrant {
            programs: vec!["git".into()],
            ..Default::default()
        };
        let negotiated = negotiate(&request(&["git", "curl"], &["TOKEN"], true), &granted);
        assert_eq!(
            negotiated,
            Negotiated::Blocked(request(&["curl"], &["TOKEN"], true))
        );
    }

    #[test]
    fn variables_never_passed_make_the_kind_invalid_whatever_is_granted() {
        let granted = KindGrant {
            env: vec!["LD_PRELOAD".into()],
            ..Default::default()
        };
        let negotiated = negotiate(
            &request(&[], &["LD_PRELOAD", "GIT_CONFIG_KEY_0"], false),
            &granted,
        );
        assert_eq!(
            negotiated,
            Negotiated::NeverPassed(vec!["LD_PRELOAD".into(), "GIT_CONFIG_KEY_0".into()])
        );
    }
}
