//! Who may talk to the socket (SPEC §12): the decision over SO_PEERCRED credentials.
//!
//! Allowed: the daemon's own effective uid, root, and — when a group is configured — peers whose primary
//! or supplementary group is that group. Supplementary groups are not in SO_PEERCRED; they are read from
//! `/proc/<pid>/status` only when the cheaper checks did not already decide.

use std::path::PathBuf;

/// Credentials of the process on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The policy: our effective uid and the optional extra group.
#[derive(Debug, Clone, Copy)]
pub struct PeerPolicy {
    pub our_euid: u32,
    pub allowed_gid: Option<u32>,
}

impl PeerPolicy {
    /// Decides for `peer`. `supplementary_groups` is called at most once, only when a configured group
    /// must be compared with groups beyond the primary one.
    pub fn allows(
        &self,
        peer: &PeerCredentials,
        supplementary_groups: impl FnOnce(&PeerCredentials) -> Vec<u32>,
    ) -> bool {
        if peer.uid == self.our_euid || peer.uid == 0 {
            return true;
        }
        match self.allowed_gid {
            None => false,
            Some(gid) if peer.gid == gid => true,
            Some(gid) => supplementary_groups(peer).contains(&gid),
        }
    }
}

/// Supplementary groups of the peer process from `/proc/<pid>/status`. An unreadable file (the process
/// is gone, or /proc is hidden) yields no groups, which can only refuse, never allow.
pub fn proc_supplementary_groups(peer: &PeerCredentials) -> Vec<u32> {
    let Some(pid) = peer.pid else {
        return Vec::new();
    };
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    match std::fs::read_to_string(&path) {
        Ok(status) => parse_groups_line(&status),
        Err(err) => {
            tracing::debug!(path = %path.display(), %err, "cannot read the peer's groups; treating as none");
            Vec::new()
        }
    }
}

fn parse_groups_line(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    fn peer(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials {
            uid,
            gid,
            pid: Some(42),
        }
    }

    fn no_groups(_: &PeerCredentials) -> Vec<u32> {
        Vec::new()
    }

    #[test]
    fn same_uid_and_root_are_allowed_without_a_group() {
        let policy = PeerPolicy {
            our_euid: ME,
            allowed_gid: None,
        };
        assert!(policy.allows(&peer(ME, 5), |_| panic!("groups must not be read")));
        assert!(policy.allows(&peer(0, 0), |_| panic!("groups must not be read")));
    }

    #[test]
    fn other_uids_are_refused_without_a_group() {
        let policy = PeerPolicy {
            our_euid: ME,
            allowed_gid: None,
        };
        assert!(!policy.allows(&peer(1001, 100), |_| vec![100]));
    }

    #[test]
    fn configured_group_allows_by_primary_or_supplementary_gid() {
        let policy = PeerPolicy {
            our_euid: ME,
            allowed_gid: Some(300),
        };
        assert!(policy.allows(&peer(1001, 300), |_| panic!("primary gid suffices")));
        assert!(policy.allows(&peer(1001, 100), |_| vec![27, 300]));
        assert!(!policy.allows(&peer(1001, 100), |_| vec![27, 301]));
        assert!(!policy.allows(&peer(1001, 100), no_groups));
    }

    #[test]
    fn groups_line_is_parsed_from_proc_status() {
        let status = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 300 \nNgid:\t0\n";
        assert_eq!(parse_groups_line(status), vec![4, 24, 27, 300]);
        assert_eq!(parse_groups_line("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups_line("Name:\tx\n"), Vec::<u32>::new());
    }

    #[test]
    fn our_own_groups_are_readable() {
        let me = PeerCredentials {
            uid: ME,
            gid: 0,
            pid: Some(std::process::id() as i32),
        };
        let from_proc = proc_supplementary_groups(&me);
        let from_libc = nix::unistd::getgroups().unwrap();
        for gid in from_libc {
            assert!(
                from_proc.contains(&gid.as_raw()),
                "{gid} missing from {from_proc:?}"
            );
        }
        assert!(proc_supplementary_groups(&PeerCredentials { pid: None, ..me }).is_empty());
    }
}
