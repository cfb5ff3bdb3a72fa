//! Authorization: roles from config map uids and groups to allowed ops on key name patterns.
//! Default deny. The caller's identity comes only from the socket's peer credentials.

use std::collections::HashSet;
use std::ffi::CString;

use crate::config::{Principal, RoleConfig};

/// Who is on the other end of a connection (from SO_PEERCRED, plus the uid's groups).
#[derive(Clone, Debug)]
pub struct Peer {
    /// Peer uid.
    pub uid: u32,
    /// Peer primary gid.
    pub gid: u32,
    /// Peer pid, when the kernel reports it.
    pub pid: Option<i32>,
    /// Supplementary groups of the uid's account (from the group database).
    pub groups: Vec<u32>,
}

impl Peer {
    /// Builds a peer from credentials, looking up the account's supplementary groups.
    pub fn from_creds(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
        let groups = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .and_then(|u| CString::new(u.name).ok())
            .and_then(|name| nix::unistd::getgrouplist(&name, gid.into()).ok())
            .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        Peer {
            uid,
            gid,
            pid,
            groups,
        }
    }
}

#[derive(Debug)]
struct Role {
    name: String,
    uids: HashSet<u32>,
    gids: HashSet<u32>,
    ops: Vec<String>,
    keys: Vec<String>,
}

/// The role set in force; replaced whole on reload.
#[derive(Debug, Default)]
pub struct Policy {
    roles: Vec<Role>,
}

/// Why a request was refused; `Display` names op and key only.
#[derive(Debug, thiserror::Error)]
#[error("not allowed to `{op}`{}", key.as_ref().map(|k| format!(" key `{}`", k.escape_default())).unwrap_or_default())]
pub struct Denied {
    op: String,
    key: Option<String>,
}

impl Policy {
    /// Resolves user and group names; an unknown name is an error naming the role.
    pub fn from_config(roles: &[RoleConfig]) -> Result<Policy, String> {
        let mut out = Vec::with_capacity(roles.len());
        for (i, r) in roles.iter().enumerate() {
            let mut uids = HashSet::new();
            for p in &r.unix_users {
                uids.insert(match p {
                    Principal::Id(id) => *id,
                    Principal::Name(n) => nix::unistd::User::from_name(n)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                        .ok_or_else(|| {
                            format!("key `roles[{i}].unix_users`: no such user `{n}`")
                        })?,
                });
            }
            let mut gids = HashSet::new();
            for p in &r.unix_groups {
                gids.insert(match p {
                    Principal::Id(id) => *id,
                    Principal::Name(n) => nix::unistd::Group::from_name(n)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.as_raw())
                        .ok_or_else(|| {
                            format!("key `roles[{i}].unix_groups`: no such group `{n}`")
                        })?,
                });
            }
            out.push(Role {
                name: r.name.clone(),
                uids,
                gids,
                ops: r.ops.clone(),
                keys: r.keys.clone(),
            });
        }
        Ok(Policy { roles: out })
    }

    fn member(role: &Role, peer: &Peer) -> bool {
        role.uids.contains(&peer.uid)
            || role.gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| role.gids.contains(g))
    }

    /// Checks `op` on `key` (None for ops that touch no key). Returns the first role that allows it.
    pub fn check(&self, peer: &Peer, op: &str, key: Option<&str>) -> Result<&str, Denied> {
        self.roles
            .iter()
            .filter(|r| Self::member(r, peer))
            .find(|r| {
                r.ops.iter().any(|p| glob_match(p, op))
                    && key.is_none_or(|k| r.keys.iter().any(|p| glob_match(p, k)))
            })
            .map(|r| r.name.as_str())
            .ok_or_else(|| Denied {
                op: op.to_owned(),
                key: key.map(str::to_owned),
            })
    }

    /// Names of the roles a peer is in (for the audit log of unauthorized requests).
    pub fn roles_of(&self, peer: &Peer) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|r| Self::member(r, peer))
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl From<Denied> for crate::error::OpError {
    fn from(e: Denied) -> Self {
        crate::error::OpError::new(custody_proto::ErrorCode::PermissionDenied, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, uid: u32, ops: &[&str], keys: &[&str]) -> RoleConfig {
        RoleConfig {
            name: name.into(),
            unix_users: vec![Principal::Id(uid)],
            unix_groups: vec![],
            ops: ops.iter().map(|s| s.to_string()).collect(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("keys.*", "keys.create"));
        assert!(!glob_match("keys.*", "sign"));
        assert!(glob_match("machine-?ign", "machine-sign"));
        assert!(glob_match("*-sign*", "machine-sign-2"));
        assert!(!glob_match("a*b", "acbd"));
    }

    #[test]
    fn default_deny_and_roles() {
        let p = Policy::from_config(&[
            role("regclient", 1000, &["sign", "keys.public"], &["machine-*"]),
            role("ops", 1001, &["ping", "status"], &[]),
        ])
        .unwrap();
        let peer = |uid| Peer {
            uid,
            gid: 5000,
            pid: None,
            groups: vec![],
        };
        assert_eq!(
            p.check(&peer(1000), "sign", Some("machine-sign")).unwrap(),
            "regclient"
        );
        assert!(p.check(&peer(1000), "sign", Some("ida-partner")).is_err());
        assert!(p
            .check(&peer(1000), "keys.create", Some("machine-x"))
            .is_err());
        assert!(p.check(&peer(1001), "ping", None).is_ok());
        let e = p
            .check(&peer(4242), "sign", Some("k"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "not allowed to `sign` key `k`");
    }

    #[test]
    fn groups_grant_membership() {
        let mut r = role("g", 1, &["*"], &["*"]);
        r.unix_users.clear();
        r.unix_groups = vec![Principal::Id(77)];
        let p = Policy::from_config(&[r]).unwrap();
        let mut peer = Peer {
            uid: 9,
            gid: 1,
            pid: None,
            groups: vec![77],
        };
        assert!(p.check(&peer, "ping", None).is_ok());
        peer.groups.clear();
        assert!(p.check(&peer, "ping", None).is_err());
    }

    #[test]
    fn unknown_names_are_errors() {
        let mut r = role("x", 0, &["*"], &[]);
        r.unix_users = vec![Principal::Name("no-such-user-custodyd".into())];
        assert!(Policy::from_config(&[r])
            .unwrap_err()
            .contains("roles[0].unix_users"));
    }
}
