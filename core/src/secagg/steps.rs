//! The messages of a session's later steps as validated domain types
//! (their wire forms are converted with `TryFrom` in `plexus-proto`).

use std::collections::{BTreeMap, BTreeSet};

use super::mask::Seed;
use super::unmask::Revealed;
use super::MAX_NODES;
use crate::error::{Error, Result};

/// Who survived a step and who dropped: each node once, in either list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub step: u32,
    /// In node-id order.
    pub survivors: Vec<String>,
    /// In node-id order.
    pub dropped: Vec<String>,
}

impl Partition {
    /// Sorts both lists and refuses a node named twice (in one list, or in
    /// both: asking for a node's self-mask share and its pair seeds at once
    /// would unmask it), no survivor, or too many nodes.
    pub fn new(step: u32, mut survivors: Vec<String>, mut dropped: Vec<String>) -> Result<Self> {
        survivors.sort();
        dropped.sort();
        let all: BTreeSet<&String> = survivors.iter().chain(&dropped).collect();
        if all.len() != survivors.len() + dropped.len() {
            let twice = survivors
                .iter()
                .find(|s| dropped.contains(s))
                .cloned()
                .unwrap_or_else(|| "a node".into());
            return Err(Error::policy(format!(
                "step {step} names {twice} twice among the survivors and the dropped: a node is a survivor or dropped, never both (the shares of its self mask and its pair seeds together would unmask it); refused"
            )));
        }
        if survivors.is_empty() || all.len() > MAX_NODES {
            return Err(Error::invalid(format!(
                "step {step} names {} survivors of {} nodes",
                survivors.len(),
                all.len()
            )));
        }
        Ok(Partition {
            step,
            survivors,
            dropped,
        })
    }
}

/// A coordinator's unmask request as a node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskRequest {
    pub partition: Partition,
    /// Survivors' signatures over the survivor list, by signer.
    pub confirmations: BTreeMap<String, Vec<u8>>,
    /// The encrypted shares addressed to this node, by sender.
    pub shares: BTreeMap<String, Vec<u8>>,
}

/// A node's masked answer to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedAnswer {
    pub session_id: String,
    pub roster_digest: [u8; 32],
    pub step: u32,
    pub vector: Vec<u128>,
    /// One encrypted share of the self-mask seed per recipient.
    pub shares: BTreeMap<String, Vec<u8>>,
    pub commitment: [u8; 32],
}

/// A survivor's signature over a survivor list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub session_id: String,
    pub step: u32,
    pub survivors: Vec<String>,
    pub signature: Vec<u8>,
}

/// A survivor's answer to the unmask step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmasked {
    pub session_id: String,
    pub step: u32,
    pub revealed: Revealed,
}

/// A seed from the wire: exactly 32 bytes.
pub fn seed_from(bytes: &[u8], what: &str) -> Result<Seed> {
    bytes.try_into().map_err(|_| {
        Error::invalid(format!(
            "{what} has {} bytes, not the 32 of a seed",
            bytes.len()
        ))
    })
}
