//! The coordinator's last step: removing the masks from the sum of the
//! survivors' vectors. Each survivor's self mask comes from its seed, rebuilt
//! from the shares the survivors revealed and checked against the hash the
//! survivor committed to; each mask a survivor shares with a dropped node
//! comes from the per-step seed the survivor revealed. Masks between two
//! survivors cancel in the sum by themselves.

use std::collections::BTreeMap;

use super::keys::Roster;
use super::mask::{add_into, adds, stream, sub_from, Kind, Seed};
use super::shares::{combine, commitment};
use super::threshold;
use crate::error::{Error, Result};

/// A survivor's masked answer at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    pub vector: Vec<u128>,
    /// The hash the node committed to its self-mask seed with.
    pub commitment: [u8; 32],
}

/// What one survivor revealed at the unmask step: its share of each
/// survivor's self-mask seed, and its pairwise seed with each dropped node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revealed {
    pub shares: BTreeMap<String, Vec<u8>>,
    pub seeds: BTreeMap<String, Seed>,
}

/// The exact sum of the survivors' plain vectors at `step`: `masked` holds
/// every survivor's answer (the survivors are its keys, the dropped the
/// rest of `roster`), `revealed` what each survivor that answered the
/// unmask step revealed.
pub fn unmask(
    roster: &Roster,
    step: u32,
    masked: &BTreeMap<String, Masked>,
    revealed: &BTreeMap<String, Revealed>,
    len: usize,
) -> Result<Vec<u128>> {
    let t = threshold(roster.members.len());
    let dropped: Vec<String> = roster
        .node_ids()
        .into_iter()
        .filter(|n| !masked.contains_key(n))
        .collect();
    let mut sum = vec![0u128; len];
    for (u, m) in masked {
        if roster.position(u).is_none() {
            return Err(Error::internal(format!("{u} is not a roster member")));
        }
        if m.vector.len() != len {
            return Err(Error::invalid(format!(
                "the masked vector of {u} has {} values where {len} were expected",
                m.vector.len()
            )));
        }
        add_into(&mut sum, &m.vector);
    }
    for (u, m) in masked {
        let shares: Vec<Vec<u8>> = revealed
            .iter()
            .filter_map(|(holder, r)| {
                let share = r.shares.get(u)?;
                // A holder reveals its own share, under its own identifier.
                (share.first().copied() == roster.holder_id(holder)).then(|| share.clone())
            })
            .collect();
        if shares.len() < t {
            return Err(Error::unavailable(format!(
                "only {} of the {t} shares needed to remove the self mask of {u} arrived, so the sum cannot be unmasked",
                shares.len()
            )));
        }
        let seed = combine(&shares, t)?;
        if commitment(&roster.session_id, step, u, &seed) != m.commitment {
            return Err(Error::invalid(format!(
                "the shares revealed for {u} do not rebuild the self-mask seed it committed to: a share was altered on the way or by its holder, so the sum cannot be unmasked"
            )));
        }
        sub_from(&mut sum, &stream(&seed, Kind::SelfMask, len)?);
        for v in &dropped {
            let seed = revealed
                .get(u)
                .and_then(|r| r.seeds.get(v))
                .ok_or_else(|| {
                    Error::unavailable(format!(
                        "{u} did not reveal the mask it shares with {v}, who dropped, so the sum cannot be unmasked"
                    ))
                })?;
            let m = stream(seed, Kind::Pair, len)?;
            // Undo what u did with the mask it shares with v.
            if adds(u, v) {
                sub_from(&mut sum, &m);
            } else {
                add_into(&mut sum, &m);
            }
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::keys::tests::{names, session};
    use crate::secagg::mask::PairKeys;
    use crate::secagg::shares::{new_seed, split};
    use crate::secagg::{min_survivors, MAX_NODES};
    use proptest::prelude::*;

    /// One step of a whole session in memory: every node masks, `drop`
    /// nodes drop after the key round, the survivors reveal what the
    /// protocol asks. Returns the unmasked sum and the survivors' plain sum.
    fn run(n: usize, drop: &[usize], len: usize, seed: u64) -> (Vec<u128>, Vec<u128>) {
        let nodes = names(n);
        let (pairs, roster) = session("s1", &nodes);
        let keys: Vec<PairKeys> = pairs
            .into_iter()
            .map(|p| p.agree(&roster).unwrap())
            .collect();
        let t = threshold(n);
        let step = 3;
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            u128::from(state) << 64 | u128::from(state.rotate_left(21))
        };
        let mut masked = BTreeMap::new();
        // shares[holder][owner] = the encrypted share owner sent holder.
        let mut inbox: BTreeMap<usize, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
        let mut want = vec![0u128; len];
        for (u, k) in keys.iter().enumerate() {
            if drop.contains(&u) {
                continue;
            }
            let plain: Vec<u128> = (0..len).map(|_| next()).collect();
            add_into(&mut want, &plain);
            let b = new_seed().unwrap();
            for (holder, share) in split(&b, t, n).unwrap().into_iter().enumerate() {
                let c = if holder == u {
                    share
                } else {
                    k.encrypt_share(&nodes[holder], step, &share).unwrap()
                };
                inbox.entry(holder).or_default().push((u, c));
            }
            let vector = k.mask(step, &plain, &b).unwrap();
            masked.insert(
                nodes[u].clone(),
                Masked {
                    vector,
                    commitment: commitment("s1", step, &nodes[u], &b),
                },
            );
        }
        let mut revealed = BTreeMap::new();
        for (w, k) in keys.iter().enumerate() {
            if drop.contains(&w) {
                continue;
            }
            let mut r = Revealed::default();
            for (u, c) in &inbox[&w] {
                let share = if *u == w {
                    c.clone()
                } else {
                    k.decrypt_share(&nodes[*u], step, c).unwrap()
                };
                r.shares.insert(nodes[*u].clone(), share);
            }
            for v in drop {
                r.seeds
                    .insert(nodes[*v].clone(), k.pair_seed(&nodes[*v], step).unwrap());
            }
            revealed.insert(nodes[w].clone(), r);
        }
        (
            unmask(&roster, step, &masked, &revealed, len).unwrap(),
            want,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn masks_cancel_for_rosters_of_3_to_50_with_up_to_a_third_dropping(
            n in 3usize..=50,
            dropped in any::<proptest::sample::Index>(),
            which in proptest::collection::vec(any::<proptest::sample::Index>(), 1..17),
            len in 1usize..24,
            seed in any::<u64>(),
        ) {
            // One to ⌊n/3⌋ dropouts (one at 3 to 5 nodes).
            let most = (n / 3).max(1);
            let count = 1 + dropped.index(most);
            let mut drop: Vec<usize> = which.iter().map(|i| i.index(n)).collect();
            drop.sort_unstable();
            drop.dedup();
            drop.truncate(count);
            prop_assume!(n - drop.len() >= threshold(n));
            let (got, want) = run(n, &drop, len, seed);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn without_dropouts_the_sum_is_exact_and_missing_reveals_are_named() {
        let (got, want) = run(5, &[], 7, 9);
        assert_eq!(got, want);
        assert!(min_survivors(MAX_NODES, 0) <= MAX_NODES);
        // Three of nine dropped: the threshold of 6 still holds.
        let (got, want) = run(9, &[0, 4, 8], 3, 11);
        assert_eq!(got, want);
    }
}
