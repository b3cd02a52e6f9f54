//! Damaged model files: every byte flip, cut or splice of a good model is
//! refused or scored, never a panic or a hang. A smoke test in the spirit
//! of a fuzzer, deterministic so that a failure replays.

use std::time::{Duration, Instant};

use plexus_onnx::{inspect, OnnxScorer};

use crate::graphs::{self, encode};

/// xorshift64: a fixed sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
    let mut bytes = good.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.next() as u8,
            2 => bytes.truncate(at.max(1)),
            _ => {
                let from = rng.below(good.len());
                let len = rng.below(16).min(good.len() - from);
                bytes.splice(at..at, good[from..from + len].iter().copied());
            }
        }
    }
    bytes
}

#[test]
fn damaged_models_are_refused_or_scored() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let rows: Vec<f32> = (0..24).map(|i| i as f32 / 7.0 - 1.5).collect();
    let (mut loaded, mut refused) = (0, 0);
    for (good, width) in [
        (encode(&graphs::logistic()), 3),
        (encode(&graphs::softmax()), 2),
        (encode(&graphs::tree()), 2),
    ] {
        for _ in 0..1000 {
            let bytes = mutate(&mut rng, &good);
            let inspected = inspect(&bytes);
            match OnnxScorer::load(&bytes, width, None) {
                Ok(scorer) => {
                    assert!(inspected.is_ok(), "load accepted what inspect refused");
                    loaded += 1;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let _ = scorer.score(&rows, rows.len() / width, deadline);
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.message.is_empty());
                    if let Err(first) = inspected {
                        assert_eq!(first, e, "load refuses for inspect's reason");
                    }
                }
            }
        }
    }
    assert!(
        loaded > 0 && refused > 0,
        "{loaded} loaded, {refused} refused"
    );
}
