//! The process's open-file limit: [`raise_fd_limit`], called once at start-up. Every connection
//! costs a descriptor, and a low default soft limit (often 1,024) would cut `--max-connections`
//! short with `EMFILE` long before the cap is reached.
//!
//! Does not own: the caps themselves (`mod.rs`), or what happens when descriptors run out
//! anyway (the accept loop pauses, in `mod.rs`).

use tracing::{info, warn};

/// Raises the soft limit on open files to the hard limit, so `--max-connections` is not cut
/// short by a low default (often 1,024), and logs the result. Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        info!("open files: no limit");
        return None;
    };
    let target = hard.unwrap_or(u64::MAX);
    if soft >= target {
        info!(
            limit = soft,
            "open files: soft limit already at the hard limit"
        );
        return Some(soft);
    }
    let raised = rustix::process::Rlimit {
        current: hard,
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            info!(
                from = soft,
                to = target,
                "open files: raised the soft limit to the hard limit"
            );
            Some(target)
        }
        Err(error) => {
            warn!(%error, limit = soft, "open files: cannot raise the soft limit");
            Some(soft)
        }
    }
}
