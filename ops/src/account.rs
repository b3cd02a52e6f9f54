//! Who runs a command, for the records of who decided: a steward's
//! approval or review at a node, an audit repair at the coordinator.

/// The local account running this command: the operating system's name
/// for the process's user (from the account database, so a record does
/// not say "unknown" where `USER` is unset, as under systemd or in a
/// container), then `USER`, then the numeric uid. Run through `sudo`, the
/// person who ran it comes first: `alice (as plexus)`.
pub fn local_user() -> String {
    let account = whoami::fallible::username()
        .ok()
        .and_then(nonempty)
        .or_else(|| env("USER"))
        .or_else(|| env("USERNAME"))
        .or_else(uid)
        .unwrap_or_else(|| "unknown".into());
    described(env("SUDO_USER"), account)
}

/// `account`, preceded by the person `sudo` ran it for when that is
/// someone else.
fn described(sudo_user: Option<String>, account: String) -> String {
    match sudo_user {
        Some(person) if person != account => format!("{person} (as {account})"),
        _ => account,
    }
}

/// The process's user id, from who owns `/proc/self`.
#[cfg(unix)]
fn uid() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| format!("uid {}", m.uid()))
}

#[cfg(not(unix))]
fn uid() -> Option<String> {
    None
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().and_then(nonempty)
}

fn nonempty(s: String) -> Option<String> {
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_named_from_the_account_database() {
        let me = local_user();
        assert!(!me.is_empty());
        assert_ne!(me, "unknown");
        assert_eq!(Some(me.clone()), nonempty(me.clone()), "no blanks: {me:?}");
    }

    #[test]
    fn sudo_names_the_person_and_the_account() {
        assert_eq!(
            described(Some("alice".into()), "plexus".into()),
            "alice (as plexus)"
        );
        assert_eq!(described(Some("root".into()), "root".into()), "root");
        assert_eq!(described(None, "plexus".into()), "plexus");
    }
}
