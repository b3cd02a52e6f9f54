//! `plexus nodes --wait`: for scripts that start a network and must not
//! query it before its nodes are connected. Asks the coordinator's node
//! listing (the one `plexus nodes` prints) until the nodes wanted are live,
//! also while the coordinator itself is still starting, and gives up after
//! a timeout naming the nodes that are not live.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use plexus_proto::v1 as pb;

use plexus_client::{Client, ConnectArgs};

/// Which nodes must be live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// At least this many, whichever they are.
    Count(usize),
    /// Every one of these.
    Nodes(Vec<String>),
}

/// Why one look at the listing did not give one.
enum Look {
    Refused(tonic::Status),
    Failed(String),
}

/// The first pause between two looks at the listing: a network that is
/// starting is usually there within tens of milliseconds (a cold start
/// waited half a second here for nodes that were live after 60 ms).
const FIRST_POLL: Duration = Duration::from_millis(10);
/// The pause it doubles up to.
const POLL: Duration = Duration::from_millis(500);

/// Reads `60s`, `2m`, `1500ms` or a bare number of seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("\"{text}\" is not a duration; write it as 60s, 2m or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{unit}\"; write it as 60s, 2m or 500ms"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("\"{text}\" is too long"))
}

/// The listing's live and not-live nodes.
fn split(listed: &[pb::NodeInfo]) -> (BTreeSet<String>, BTreeSet<String>) {
    let live = listed
        .iter()
        .filter(|n| n.live)
        .map(|n| n.node_id.clone())
        .collect();
    let down = listed
        .iter()
        .filter(|n| !n.live)
        .map(|n| n.node_id.clone())
        .collect();
    (live, down)
}

/// The nodes still missing for `wanted`, empty when it is met.
pub fn missing(wanted: &Wanted, live: &BTreeSet<String>) -> Vec<String> {
    match wanted {
        Wanted::Nodes(nodes) => nodes
            .iter()
            .filter(|n| !live.contains(*n))
            .cloned()
            .collect(),
        Wanted::Count(n) if live.len() >= *n => Vec::new(),
        Wanted::Count(n) => vec![format!("{} more", n - live.len())],
    }
}

fn names(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".to_string()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Waits until the nodes `wanted` are live; returns the last listing.
pub async fn wait(
    conn: &ConnectArgs,
    wanted: &Wanted,
    timeout: Duration,
) -> Result<pb::ListNodesResponse> {
    // Wrong or missing certificate files will not fix themselves: said at once.
    let files = conn.tls_files()?;
    files.validate().map_err(|e| anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut client: Option<Client> = None;
    let mut last = None;
    let mut why = String::from("the coordinator was not asked yet");
    let mut pause = FIRST_POLL;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(left.max(POLL), async {
            if client.is_none() {
                let c = Client::connect_any(&conn.coordinator, &files, conn.server_name.clone());
                client = Some(c.await.map_err(|e| Look::Failed(format!("{e:#}")))?);
            }
            let c = client.as_ref().expect("connected above");
            c.admin()
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| match s.code() {
                    // Who you are and what you may see will not change by waiting.
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                        Look::Refused(s)
                    }
                    _ => Look::Failed(plexus_proto::convert::from_status(&s).message),
                })
        })
        .await;
        match attempt {
            Ok(Ok(listing)) => {
                let (live, _) = split(&listing.nodes);
                if missing(wanted, &live).is_empty() {
                    return Ok(listing);
                }
                last = Some(listing);
            }
            Ok(Err(Look::Refused(s))) => {
                bail!(
                    "the coordinator refused to list the nodes: {}",
                    plexus_proto::convert::from_status(&s).message
                );
            }
            Ok(Err(Look::Failed(e))) => {
                why = e;
                client = None;
            }
            Err(_) => {
                why = "the coordinator did not answer in time".to_string();
                client = None;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timed_out(wanted, timeout, last.as_ref(), &why));
        }
        tokio::time::sleep(
            pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        pause = (pause * 2).min(POLL);
    }
}

/// What did not happen in time, and where to look.
fn timed_out(
    wanted: &Wanted,
    timeout: Duration,
    listing: Option<&pb::ListNodesResponse>,
    why: &str,
) -> anyhow::Error {
    let after = format!("{:.0} s", timeout.as_secs_f64());
    let Some(listing) = listing else {
        return anyhow!(
            "the coordinator's node listing could not be read within {after} ({why}); check that plexus-coordinator runs and that --coordinator names it"
        );
    };
    let (live, down) = split(&listing.nodes);
    let what = match wanted {
        Wanted::Nodes(_) => format!(
            "not live after {after}: {}",
            missing(wanted, &live).join(", ")
        ),
        Wanted::Count(n) => format!(
            "only {} of the {n} nodes wanted are live after {after}",
            live.len()
        ),
    };
    anyhow!(
        "{what} (live: {}; seen but not live: {}); check that their plexus-node runs and reaches the coordinator: the node's log says why it does not connect",
        names(&live),
        names(&down)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_people_write_them() {
        assert_eq!(parse_timeout("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "-1s", "10 parsecs", "1e400"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_is_missing_is_named() {
        let live: BTreeSet<String> = ["hospital-a", "hospital-c"].map(String::from).into();
        let nodes = |n: &[&str]| Wanted::Nodes(n.iter().map(|s| s.to_string()).collect());
        assert!(missing(&nodes(&["hospital-a"]), &live).is_empty());
        assert_eq!(
            missing(&nodes(&["hospital-a", "hospital-b"]), &live),
            ["hospital-b"]
        );
        assert!(missing(&Wanted::Count(2), &live).is_empty());
        assert_eq!(missing(&Wanted::Count(3), &live), ["1 more"]);

        let info = |id: &str, live: bool| pb::NodeInfo {
            node_id: id.into(),
            live,
            ..Default::default()
        };
        let listing = pb::ListNodesResponse {
            nodes: vec![info("hospital-a", true), info("hospital-b", false)],
            ..Default::default()
        };
        let e = timed_out(
            &nodes(&["hospital-a", "hospital-b", "hospital-c"]),
            Duration::from_secs(60),
            Some(&listing),
            "",
        )
        .to_string();
        assert!(
            e.starts_with("not live after 60 s: hospital-b, hospital-c (live: hospital-a; seen but not live: hospital-b)"),
            "{e}"
        );
        let e = timed_out(
            &Wanted::Count(3),
            Duration::from_secs(5),
            Some(&listing),
            "",
        )
        .to_string();
        assert!(
            e.starts_with("only 1 of the 3 nodes wanted are live after 5 s"),
            "{e}"
        );
        let e = timed_out(
            &Wanted::Count(3),
            Duration::from_secs(5),
            None,
            "connection refused",
        )
        .to_string();
        assert!(
            e.contains("connection refused") && e.contains("plexus-coordinator"),
            "{e}"
        );
    }
}
