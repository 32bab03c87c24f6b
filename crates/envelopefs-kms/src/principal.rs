//! The caller as the key service sees it: a [`Principal`] is a local uid, its primary and
//! supplementary gids, the user and group names the system databases give for them, and
//! whether it is the volume administrator (the uid the key service was told to trust, and
//! root). Principals are built per request from the calling process
//! ([`Principal::from_caller`]); supplementary groups come from `/proc/<pid>/status`, names
//! from `getpwuid_r`/`getgrgid_r` (cached for a minute). Key policies
//! ([`crate::policy`]) decide what a principal may do.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Caller;

/// The caller, resolved for policy evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Effective (filesystem) user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Primary and supplementary group ids, primary first, without duplicates.
    pub groups: Vec<u32>,
    /// The user's name, when the password database knows the uid.
    pub user_name: Option<String>,
    /// Names of the groups in `groups` that the group database knows.
    pub group_names: Vec<String>,
    /// A volume administrator (a uid the keystore lists, or root).
    pub is_admin: bool,
}

impl Principal {
    /// Resolves a caller: user name (`getpwuid_r`), primary group plus the supplementary
    /// groups of process `pid` (from the `Groups:` line of `/proc/<pid>/status`, used only
    /// when that process's effective or filesystem uid is `c.uid`, so a recycled pid cannot
    /// lend its groups), group names (`getgrgid_r`). With `pid == 0`, or when `/proc` cannot
    /// tell, the groups are just `c.gid`. Names are cached for a minute.
    ///
    /// Reading `/proc/<pid>/status` costs about 20 µs (the kernel formats the whole file);
    /// when [`needs_groups`](crate::policy::needs_groups) says no statement or grant names a group, use
    /// [`Principal::from_caller_with`] with `supplementary = false` to skip it (about 1 µs).
    pub(crate) fn from_caller(c: &Caller, admins: &[u32]) -> Self {
        Self::from_caller_with(c, admins, true)
    }

    /// [`Principal::from_caller`], reading the supplementary groups only when
    /// `supplementary` is true (otherwise `groups` is just the primary gid). Deliberately not
    /// cached: a process may drop groups with setgroups(2) at any moment.
    pub(crate) fn from_caller_with(c: &Caller, admins: &[u32], supplementary: bool) -> Self {
        let mut groups = vec![c.gid];
        if c.pid != 0 && supplementary {
            for g in proc_groups(c.pid, c.uid).unwrap_or_default() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        let group_names = groups.iter().filter_map(|&g| group_name(g)).collect();
        Principal {
            uid: c.uid,
            gid: c.gid,
            groups,
            user_name: user_name(c.uid),
            group_names,
            is_admin: admins.contains(&c.uid) || c.uid == 0,
        }
    }

    /// `uid 1000 (alice)`, or `uid 1000` when the name is unknown: for log lines and reasons.
    pub(crate) fn label(&self) -> String {
        match &self.user_name {
            Some(n) => format!("uid {} ({n})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Supplementary groups of `pid`, if its effective or filesystem uid is `uid`.
fn proc_groups(pid: u32, uid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut uid_ok = false;
    let mut groups = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            // real, effective, saved, filesystem
            let ids: Vec<u32> = rest
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect();
            uid_ok = ids.len() == 4 && (ids[1] == uid || ids[3] == uid);
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = Some(
                rest.split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            );
        }
    }
    if !uid_ok {
        log::debug!("process {pid} no longer runs as uid {uid}; using its primary group only");
        return None;
    }
    groups
}

/// How long a resolved (or unresolvable) user or group name is reused.
const NAME_TTL: Duration = Duration::from_secs(60);
/// Entries kept per name cache before it is emptied.
const NAME_CACHE_MAX: usize = 4096;

/// A cached id → name map.
type NameCache = Mutex<BTreeMap<u32, (Option<String>, Instant)>>;

/// Guards the uid → user name cache (entries live [`NAME_TTL`]).
static USER_NAMES: NameCache = Mutex::new(BTreeMap::new());
/// Guards the gid → group name cache (entries live [`NAME_TTL`]).
static GROUP_NAMES: NameCache = Mutex::new(BTreeMap::new());

fn cached_name(cache: &NameCache, id: u32, lookup: fn(u32) -> Option<String>) -> Option<String> {
    let now = Instant::now();
    if let Some((name, at)) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        && now.duration_since(*at) < NAME_TTL
    {
        return name.clone();
    }
    // The lookup may read /etc/passwd or ask a directory service: done without the lock.
    let name = lookup(id);
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= NAME_CACHE_MAX {
        map.clear();
    }
    map.insert(id, (name.clone(), now));
    name
}

/// The name of user `uid` (cached for a minute), or `None` when the system does not know it.
pub fn user_name(uid: u32) -> Option<String> {
    cached_name(&USER_NAMES, uid, lookup_user_name)
}

/// The name of group `gid` (cached for a minute), or `None` when the system does not know it.
pub(crate) fn group_name(gid: u32) -> Option<String> {
    cached_name(&GROUP_NAMES, gid, lookup_group_name)
}

pub use envelopefs_sys::users::{group_id, user_id};
use envelopefs_sys::users::{lookup_group_name, lookup_user_name};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_from_the_current_process() {
        let me = Caller::current();
        let p = Principal::from_caller(&me, &[]);
        assert_eq!((p.uid, p.gid), (me.uid, me.gid));
        assert_eq!(p.groups[0], me.gid);
        assert_eq!(p.is_admin, me.uid == 0);
        assert_eq!(p.user_name, lookup_user_name(me.uid));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let sup: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(
            sup.iter().all(|g| p.groups.contains(g)),
            "{sup:?} ⊄ {:?}",
            p.groups
        );
        assert!(Principal::from_caller(&me, &[me.uid]).is_admin);

        // A pid now running as someone else lends no groups; pid 0 means just the gid.
        let stranger = Caller {
            uid: me.uid.wrapping_add(12345),
            ..me
        };
        assert_eq!(Principal::from_caller(&stranger, &[]).groups, vec![me.gid]);
        let skipped = Principal::from_caller_with(&me, &[], false);
        assert_eq!(skipped.groups, vec![me.gid]);
        assert_eq!(skipped.user_name, p.user_name);
        let no_pid = Caller { pid: 0, ..me };
        assert_eq!(Principal::from_caller(&no_pid, &[]).groups, vec![me.gid]);
        assert_eq!(lookup_user_name(0).as_deref(), Some("root"));
        assert_eq!((user_id("root"), group_id("root")), (Some(0), Some(0)));
        assert_eq!(user_id("no-such-user-envelopefs"), None);
        assert_eq!(group_id("no-such-group-envelopefs"), None);
        assert_eq!(group_name(0).as_deref(), Some("root"));
    }
}
