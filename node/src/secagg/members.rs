//! Checking every member of a roster before a node agrees keys with it:
//! a roster member is a node of the study's approved definition, holding a
//! certificate of the network CA for that node that the CRL does not
//! revoke, that signed its key bundle for this session and question.
//! Anything else is refused with a `policy` error naming the member and the
//! rule, which the job log keeps.

use plexus_core::secagg::keys::bundle_message;
use plexus_core::secagg::{Roster, MIN_NODES};
use plexus_core::{Error, Result};
use plexus_tls::{PeerTrust, Role};

use super::sessions::Session;

pub(crate) fn check(
    me: &str,
    session: &Session,
    roster: &Roster,
    trust: &PeerTrust,
    now_ms: i64,
) -> Result<()> {
    let sid = &roster.session_id;
    let study = &session.study;
    if let Some(m) = roster
        .members
        .iter()
        .find(|m| !study.nodes.contains(&m.bundle.node))
    {
        return Err(Error::policy(format!(
            "roster member {} of session {sid} is refused: it is not a node of study \"{}\" in the definition this node approved ({})",
            m.bundle.node, study.study_id, study.definition_hash
        )));
    }
    roster.validate()?;
    let least = MIN_NODES.max(study.min_nodes as usize);
    if roster.members.len() < least {
        return Err(Error::policy(format!(
            "the roster of session {sid} has {} nodes and study \"{}\" needs at least {least}; refused",
            roster.members.len(),
            study.study_id
        )));
    }
    for m in &roster.members {
        let node = &m.bundle.node;
        let refuse = |rule: String| {
            Error::policy(format!(
                "roster member {node} of session {sid} is refused: {rule}"
            ))
        };
        if node == me {
            if m.bytes != session.own_bundle {
                return Err(refuse(
                    "the key bundle given for this node is not the one it signed".into(),
                ));
            }
            continue;
        }
        trust
            .verify(&m.certificate, Role::Node, node, now_ms)
            .map_err(refuse)?;
        plexus_tls::verify_by_certificate(&m.certificate, &bundle_message(&m.bytes), &m.signature)
            .map_err(|_| {
                refuse(
                    "its key bundle does not carry its signature (forged or altered keys)".into(),
                )
            })?;
        let b = &m.bundle;
        if b.study_id != study.study_id
            || b.definition_hash != study.definition_hash
            || b.binding != session.binding
        {
            return Err(refuse(
                "its keys were made for another study, definition or question".into(),
            ));
        }
    }
    Ok(())
}
