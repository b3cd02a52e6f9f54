//! Self-mask seeds and their Shamir shares.
//!
//! A node draws a fresh 32-byte seed b_u for every step it masks and splits
//! it t-of-n among the roster with vsss-rs's Shamir sharing over GF(2^8),
//! byte by byte: any t shares rebuild b_u, fewer say nothing about it. The
//! holder of share i is the roster's i-th member (identifier i, from 1).
//! Alongside, the node commits to b_u with a hash, so that the coordinator
//! can tell a seed rebuilt from honest shares from one rebuilt from a
//! corrupted share.

use std::convert::Infallible;

use ring::rand::SecureRandom;
use vsss_rs::{Gf256, IdentifierGf256};

use super::mask::Seed;
use crate::error::{Error, Result};

const COMMITMENT_LABEL: &[u8] = b"plexus secagg self-mask commitment v1";

/// Bytes of one share: the holder's identifier, then one byte per byte of
/// the seed.
pub const SHARE_LEN: usize = 33;

/// The system's random source (ring's), as the `rand_core` generator
/// vsss-rs draws polynomial coefficients from. The operating system's
/// generator failing is not something a node can go on from.
struct SystemRng(ring::rand::SystemRandom);

impl rand_core::TryRng for SystemRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        self.0
            .fill(dst)
            .expect("the operating system's random source works");
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SystemRng {}

/// A fresh random seed.
pub fn new_seed() -> Result<Seed> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| Error::internal("the system's random source failed"))?;
    Ok(seed)
}

/// `seed` split into `n` shares any `threshold` of which rebuild it; share
/// i (from 0) belongs to the roster's i-th member.
pub fn split(seed: &Seed, threshold: usize, n: usize) -> Result<Vec<Vec<u8>>> {
    let ids = (1..=n).map(|i| u8::try_from(i).map(|i| IdentifierGf256(Gf256(i))));
    let ids: Vec<IdentifierGf256> = ids
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid(format!("{n} shares are more than 255")))?;
    let rng = SystemRng(ring::rand::SystemRandom::new());
    Gf256::split_bytes_with_participant_ids_iter(threshold, n, seed, rng, ids)
        .map_err(|e| Error::internal(format!("cannot split a self-mask seed: {e}")))
}

/// The seed `shares` rebuild. They must come from `threshold` or more
/// distinct holders; the caller checks the result against the commitment.
pub fn combine(shares: &[Vec<u8>], threshold: usize) -> Result<Seed> {
    if shares.len() < threshold {
        return Err(Error::unavailable(format!(
            "{} shares of a self-mask seed arrived where {threshold} are needed",
            shares.len()
        )));
    }
    if shares.iter().any(|s| s.len() != SHARE_LEN) {
        return Err(Error::invalid(format!(
            "a share of a self-mask seed is not {SHARE_LEN} bytes"
        )));
    }
    let bytes = Gf256::combine_bytes(shares).map_err(|e| {
        Error::invalid(format!(
            "the shares of a self-mask seed do not combine: {e}"
        ))
    })?;
    bytes
        .try_into()
        .map_err(|_| Error::internal("a rebuilt seed is not 32 bytes"))
}

/// The hash a node commits to its self-mask seed with.
pub fn commitment(session_id: &str, step: u32, node: &str, seed: &Seed) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for field in [
        COMMITMENT_LABEL,
        session_id.as_bytes(),
        &step.to_be_bytes(),
        node.as_bytes(),
        seed,
    ] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_of_shares_rebuilds_the_seed_and_fewer_do_not() {
        let seed = new_seed().unwrap();
        let shares = split(&seed, 4, 6).unwrap();
        assert_eq!(shares.len(), 6);
        assert!(shares.iter().all(|s| s.len() == SHARE_LEN));
        assert_eq!(
            shares.iter().map(|s| s[0]).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(combine(&shares[2..], 4).unwrap(), seed);
        assert_eq!(combine(&shares[..4], 4).unwrap(), seed);
        let picked = vec![
            shares[5].clone(),
            shares[0].clone(),
            shares[3].clone(),
            shares[1].clone(),
        ];
        assert_eq!(combine(&picked, 4).unwrap(), seed);
        assert!(combine(&shares[..3], 4).is_err());
        // Three shares interpolate to something else: the commitment tells.
        let wrong = Gf256::combine_bytes(&shares[..3]).unwrap();
        assert_ne!(wrong, seed.to_vec());
        assert_ne!(
            commitment("s", 1, "a", &seed),
            commitment("s", 2, "a", &seed)
        );
        // The same share twice is refused.
        let twice = vec![shares[0].clone(); 4];
        assert!(combine(&twice, 4).is_err());
    }
}
