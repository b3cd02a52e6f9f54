//! A hostile coordinator: this test signs jobs with the coordinator's key
//! and drives four real node runners (hospitals a to d, with certificates
//! from the sandbox's throwaway CA) through secure aggregation sessions it
//! corrupts: forged keys for a member, a member from outside the study, a
//! revoked member, a roster changed mid-session, a replayed session, the
//! same question over two rosters, an unmask naming a node both survivor
//! and dropped, a second unmask with another survivor list. Each is refused
//! and logged, and what the harness holds never yields a node's figure.

use std::collections::BTreeMap;

use prost::Message;

use plexus_core::secagg::keys::bundle_message;
use plexus_core::secagg::shares::combine;
use plexus_core::secagg::steps::{MaskedAnswer, Partition, UnmaskRequest, Unmasked};
use plexus_core::secagg::{
    mask::{stream, sub_from, Kind},
    threshold, KeyBundle, KeyPairs, Roster, SignedBundle, Summed,
};
use plexus_core::{Dictionary, ErrorCode, Query, RawStats, StudyDefinition};
use plexus_node::job::JobRunner;
use plexus_node::RunOptions;
use plexus_proto::convert::code_from_i32;
use plexus_proto::v1 as pb;
use plexus_tests::{consenting, reference, sandbox, today, Sandbox, SandboxOptions};

const NODES: [&str; 4] = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"];
const COUNT: &str = r#"{"analysis": {"count": {}}}"#;

struct Harness {
    sb: Sandbox,
    runners: BTreeMap<String, JobRunner>,
    key: plexus_tls::SigningKey,
    study: StudyDefinition,
}

fn sid(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

impl Harness {
    fn job(&self, node: &str, query: &str, secure: pb::SecureAggregation) -> pb::SignedJob {
        let query = Query::from_json(query).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
        let job = pb::Job {
            job_id: hex::encode(id),
            study_id: self.study.id.clone(),
            purpose: Some((&self.study.purpose().unwrap()).into()),
            query_hash: query.hash(),
            query: Some(pb::Query::from(&query)),
            min_cell_size: 5,
            deadline_unix_ms: now + 60_000,
            issued_unix_ms: now,
            audience: node.into(),
            privacy: Some(pb::JobPrivacy {
                exact: true,
                ..Default::default()
            }),
            secure_aggregation: Some(secure),
            study_definition_hash: self.study.definition_hash(),
            ..Default::default()
        };
        let bytes = job.encode_to_vec();
        pb::SignedJob {
            signature: self.key.sign(&bytes),
            job: bytes,
        }
    }

    async fn take(&self, node: &str, signed: pb::SignedJob) -> pb::job_result::Outcome {
        match self.runners[node].take(signed).await.unwrap() {
            pb::node_message::Msg::Result(r) => r.outcome.unwrap(),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    async fn send(
        &self,
        node: &str,
        query: &str,
        session: &str,
        step: pb::secure_aggregation::Step,
    ) -> pb::job_result::Outcome {
        let secure = pb::SecureAggregation {
            session_id: session.into(),
            step: Some(step),
        };
        self.take(node, self.job(node, query, secure)).await
    }

    async fn keys(&self, node: &str, session: &str, nodes: &[&str], query: &str) -> SignedBundle {
        match self.key_answer(node, session, nodes, query).await {
            pb::job_result::Outcome::Keys(k) => SignedBundle::try_from(k.bundle.unwrap()).unwrap(),
            other => panic!("{node} made no keys: {other:?}"),
        }
    }

    async fn key_answer(
        &self,
        node: &str,
        session: &str,
        nodes: &[&str],
        query: &str,
    ) -> pb::job_result::Outcome {
        let step = pb::secure_aggregation::Step::KeyRequest(pb::KeyRequest {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            study_definition: serde_json::to_vec(&self.study).unwrap(),
        });
        self.send(node, query, session, step).await
    }

    /// Every member's real, signed bundle for a new session.
    async fn roster(&self, session: &str, nodes: &[&str], query: &str) -> Roster {
        let mut members = Vec::new();
        for n in nodes {
            members.push(self.keys(n, session, nodes, query).await);
        }
        Roster {
            session_id: session.into(),
            members,
        }
    }

    async fn mask(
        &self,
        node: &str,
        roster: &Roster,
        step: u32,
        query: &str,
    ) -> pb::job_result::Outcome {
        let request = pb::secure_aggregation::Step::Mask(pb::MaskRequest {
            roster: Some(pb::Roster::from(roster)),
            step,
        });
        self.send(node, query, &roster.session_id, request).await
    }

    async fn unmask(
        &self,
        node: &str,
        session: &str,
        request: &UnmaskRequest,
        query: &str,
    ) -> pb::job_result::Outcome {
        let step = pb::secure_aggregation::Step::Unmask(pb::UnmaskRequest::from(request));
        self.send(node, query, session, step).await
    }

    async fn confirm(
        &self,
        node: &str,
        session: &str,
        p: &Partition,
        query: &str,
    ) -> pb::job_result::Outcome {
        let step = pb::secure_aggregation::Step::Confirm(pb::ConfirmRequest::from(p));
        self.send(node, query, session, step).await
    }

    /// A bundle for `node` in `roster`'s session signed with the key in
    /// `key_pem` and carrying the certificate in `cert_pem`.
    fn forge(
        &self,
        roster: &Roster,
        node: &str,
        cert_pem: &std::path::Path,
        key_pem: &std::path::Path,
    ) -> SignedBundle {
        let real = roster.member(node).unwrap();
        let fake = KeyPairs::generate(&roster.session_id, node, NODES).unwrap();
        let bundle = KeyBundle {
            keys: fake.public_keys().clone(),
            ..real.bundle.clone()
        };
        let bytes = pb::KeyBundle::from(&bundle).encode_to_vec();
        let signer = plexus_tls::CertSigner::load(key_pem).unwrap();
        SignedBundle {
            signature: signer.sign(&bundle_message(&bytes)),
            certificate: plexus_tls::load_certs(cert_pem).unwrap()[0]
                .as_ref()
                .to_vec(),
            bytes,
            bundle,
        }
    }
}

/// The refusal in `outcome`: a `policy` error containing every needle.
fn refused(outcome: pb::job_result::Outcome, needles: &[&str]) -> String {
    let pb::job_result::Outcome::Error(e) = outcome else {
        panic!("not refused: {outcome:?}")
    };
    assert_eq!(code_from_i32(e.code), ErrorCode::Policy, "{e:?}");
    for n in needles {
        assert!(e.message.contains(n), "{n}: {}", e.message);
    }
    e.message
}

fn masked(outcome: pb::job_result::Outcome) -> MaskedAnswer {
    match outcome {
        pb::job_result::Outcome::Masked(m) => MaskedAnswer::try_from(m).unwrap(),
        other => panic!("not masked: {other:?}"),
    }
}

fn unmasked(outcome: pb::job_result::Outcome) -> Unmasked {
    match outcome {
        pb::job_result::Outcome::Unmasked(u) => Unmasked::try_from(u).unwrap(),
        other => panic!("not unmasked: {other:?}"),
    }
}

/// The request an honest coordinator sends `node` at unmasking.
fn request(p: &Partition, answers: &BTreeMap<String, MaskedAnswer>, node: &str) -> UnmaskRequest {
    UnmaskRequest {
        partition: p.clone(),
        confirmations: BTreeMap::new(),
        shares: answers
            .iter()
            .filter_map(|(u, m)| Some((u.clone(), m.shares.get(node)?.clone())))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_coordinator_is_refused_and_learns_no_hospitals_figure() {
    let sb = Sandbox::prepare(SandboxOptions::with_nodes(4, 200, 101))
        .await
        .unwrap();
    let study = sb.over_all_nodes(sandbox::secure_study());
    sb.approve(&study).unwrap();
    let mut runners = BTreeMap::new();
    for n in NODES {
        let config = sb.node_configs[n].clone();
        runners.insert(
            n.to_string(),
            plexus_node::open_runner(config, RunOptions::default())
                .await
                .unwrap(),
        );
    }
    let h = Harness {
        key: plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap(),
        sb,
        runners,
        study,
    };
    let dict = Dictionary::cardiovascular();
    let purpose = h.study.purpose().unwrap();
    let count_of = |i: usize| {
        let q = Query::from_json(COUNT).unwrap();
        match reference(&consenting(&h.sb.sites[i], &purpose, today()), &q, &dict) {
            RawStats::Count(n) => n,
            other => panic!("{other:?}"),
        }
    };
    let figures: Vec<u64> = (0..4).map(count_of).collect();

    // 1. An honest session: the harness unmasks the sum, and only the sum.
    let s1 = sid(1);
    let roster = h.roster(&s1, &NODES, COUNT).await;
    let mut answers = BTreeMap::new();
    for n in NODES {
        answers.insert(n.to_string(), masked(h.mask(n, &roster, 1, COUNT).await));
    }
    let all = Partition::new(1, NODES.map(String::from).to_vec(), vec![]).unwrap();
    let mut revealed = BTreeMap::new();
    for n in NODES {
        let u = unmasked(h.unmask(n, &s1, &request(&all, &answers, n), COUNT).await);
        assert!(u.revealed.seeds.is_empty());
        revealed.insert(n.to_string(), u.revealed);
    }
    let vectors = answers
        .iter()
        .map(|(n, m)| {
            (
                n.clone(),
                plexus_core::secagg::unmask::Masked {
                    vector: m.vector.clone(),
                    commitment: m.commitment,
                },
            )
        })
        .collect();
    let q = Query::from_json(COUNT).unwrap();
    let sum = plexus_core::secagg::unmask::unmask(&roster, 1, &vectors, &revealed, 2).unwrap();
    let Summed::Cells { totals, suppressed } = Summed::decode(&q.analysis, &dict, &sum, 4).unwrap()
    else {
        panic!()
    };
    assert_eq!(totals, [figures.iter().sum::<u64>()]);
    assert_eq!(suppressed, [0]);
    // With every self mask removed, one node's vector still hides its
    // figure behind the masks it shares with the others.
    let t = threshold(4);
    for (n, m) in &answers {
        let shares: Vec<Vec<u8>> = revealed.values().map(|r| r.shares[n].clone()).collect();
        let seed = combine(&shares, t).unwrap();
        let mut alone = m.vector.clone();
        sub_from(&mut alone, &stream(&seed, Kind::SelfMask, 2).unwrap());
        assert!(alone[0] > u128::from(u64::MAX), "{n}: {alone:?}");
    }

    // 2. The same question over another roster: hospital-a's count is
    // already part of a sum over a, b, c and d.
    let s2 = sid(2);
    let three = ["hospital-a", "hospital-b", "hospital-c"];
    let roster3 = h.roster(&s2, &three, COUNT).await;
    refused(
        h.mask("hospital-a", &roster3, 1, COUNT).await,
        &["already contributed this question's answer", "hospital-d"],
    );

    // From here on, other questions: each cohort is a fresh contribution.
    let cohort = |n: u32| {
        let age = n + 20;
        format!(
            r#"{{"cohort": {{"compare": {{"variable": "age", "op": ">=", "value": {age}}}}}, "analysis": {{"count": {{}}}}}}"#
        )
    };

    // 3. Forged keys for hospital-d: its bundle with other keys, (a) under
    // its real signature, (b) signed by hospital-c, (c) by a certificate
    // for hospital-d from another CA.
    let pki = h.sb.pki.clone();
    let other_ca = tempfile::tempdir().unwrap();
    let foreign = plexus_tls::CaDir::create(
        other_ca.path(),
        plexus_tls::DevCa::generate("another CA").unwrap(),
        7,
    )
    .unwrap();
    let (_, foreign_cert, foreign_key) = foreign
        .issue(plexus_tls::Role::Node, "hospital-d", &[], &[])
        .unwrap();
    let forgeries: [(u8, &str); 3] = [
        (3, "does not carry its signature"),
        (4, "not node \"hospital-d\""),
        (5, "not issued by the network CA"),
    ];
    for (n, rule) in forgeries {
        let s = sid(n);
        let q = cohort(40 + u32::from(n));
        let mut roster = h.roster(&s, &NODES, &q).await;
        let forged = match n {
            3 => {
                let mut b = roster.member("hospital-d").unwrap().clone();
                let fake = KeyPairs::generate(&s, "hospital-d", NODES).unwrap();
                b.bundle.keys = fake.public_keys().clone();
                b.bytes = pb::KeyBundle::from(&b.bundle).encode_to_vec();
                b
            }
            4 => h.forge(
                &roster,
                "hospital-d",
                &pki.join("hospital-c.pem"),
                &pki.join("hospital-c.key"),
            ),
            _ => h.forge(&roster, "hospital-d", &foreign_cert, &foreign_key),
        };
        roster.members[3] = forged;
        refused(
            h.mask("hospital-a", &roster, 1, &q).await,
            &["roster member hospital-d", rule],
        );
        // The session is over for hospital-a: no masked answer, ever.
        refused(h.mask("hospital-a", &roster, 2, &q).await, &["discarded"]);
    }

    // 4. A member outside the study, with a valid certificate of the
    // network's CA: refused at the key round and in a roster.
    let (_, z_cert, z_key) =
        h.sb.ca
            .issue(plexus_tls::Role::Node, "hospital-z", &[], &[])
            .unwrap();
    let s6 = sid(6);
    let five = [
        "hospital-a",
        "hospital-b",
        "hospital-c",
        "hospital-d",
        "hospital-z",
    ];
    refused(
        h.key_answer("hospital-a", &s6, &five, &cohort(50)).await,
        &["hospital-z", "not a node of study"],
    );
    let s7 = sid(7);
    let mut roster = h.roster(&s7, &NODES, &cohort(51)).await;
    let mut stranger = h.forge(&roster, "hospital-d", &z_cert, &z_key);
    stranger.bundle.node = "hospital-z".into();
    stranger.bytes = pb::KeyBundle::from(&stranger.bundle).encode_to_vec();
    let signer = plexus_tls::CertSigner::load(&z_key).unwrap();
    stranger.signature = signer.sign(&bundle_message(&stranger.bytes));
    roster.members.push(stranger);
    refused(
        h.mask("hospital-a", &roster, 1, &cohort(51)).await,
        &["roster member hospital-z", "not a node of study"],
    );

    // 5. The roster changed mid-session, and a replayed session.
    let s8 = sid(8);
    let q8 = cohort(52);
    let roster = h.roster(&s8, &NODES, &q8).await;
    masked(h.mask("hospital-a", &roster, 1, &q8).await);
    let mut changed = roster.clone();
    changed.members.pop();
    refused(
        h.mask("hospital-a", &changed, 2, &q8).await,
        &["differs from the roster"],
    );
    refused(
        h.mask("hospital-a", &roster, 1, &q8).await,
        &["already masked step 1"],
    );
    refused(
        h.key_answer("hospital-a", &s8, &NODES, &q8).await,
        &["already made keys"],
    );
    let replay = h.job(
        "hospital-a",
        &q8,
        pb::SecureAggregation {
            session_id: s8.clone(),
            step: Some(pb::secure_aggregation::Step::Mask(pb::MaskRequest {
                roster: Some(pb::Roster::from(&roster)),
                step: 3,
            })),
        },
    );
    masked(h.take("hospital-a", replay.clone()).await);
    let e = refused(h.take("hospital-a", replay).await, &[]);
    assert!(e.contains("replay") || e.contains("already"), "{e}");

    // 6. Unmasking: a node named both survivor and dropped, a dropout
    // nobody confirmed, and a second request with another survivor list.
    let s9 = sid(9);
    let q9 = cohort(53);
    let roster = h.roster(&s9, &NODES, &q9).await;
    let mut answers = BTreeMap::new();
    for n in NODES {
        answers.insert(n.to_string(), masked(h.mask(n, &roster, 1, &q9).await));
    }
    let both = pb::UnmaskRequest {
        step: 1,
        survivors: NODES.map(String::from).to_vec(),
        dropped: vec!["hospital-d".into()],
        ..Default::default()
    };
    refused(
        h.send(
            "hospital-a",
            &q9,
            &s9,
            pb::secure_aggregation::Step::Unmask(both),
        )
        .await,
        &["hospital-d twice", "never both"],
    );
    let without_d = Partition::new(
        1,
        three.map(String::from).to_vec(),
        vec!["hospital-d".into()],
    )
    .unwrap();
    refused(
        h.unmask(
            "hospital-a",
            &s9,
            &request(&without_d, &answers, "hospital-a"),
            &q9,
        )
        .await,
        &["only 0 survivors signed"],
    );
    let all = Partition::new(1, NODES.map(String::from).to_vec(), vec![]).unwrap();
    refused(
        h.unmask(
            "hospital-a",
            &s9,
            &request(&all, &answers, "hospital-a"),
            &q9,
        )
        .await,
        &["already answered an unmask request"],
    );
    // b and c sign the list without d; each signs one list per step; and
    // two signatures of four are not the t = 3 that revealing the seeds
    // shared with d needs. a, which already answered, signs nothing more.
    let mut signatures = BTreeMap::new();
    for n in ["hospital-b", "hospital-c"] {
        let pb::job_result::Outcome::Confirmed(c) = h.confirm(n, &s9, &without_d, &q9).await else {
            panic!("{n} did not sign")
        };
        signatures.insert(n.to_string(), c.signature);
    }
    refused(
        h.confirm("hospital-b", &s9, &all, &q9).await,
        &["already signed another survivor list"],
    );
    refused(
        h.confirm("hospital-a", &s9, &without_d, &q9).await,
        &["already answered the unmask request"],
    );
    let mut with_sigs = request(&without_d, &answers, "hospital-b");
    with_sigs.confirmations = signatures;
    refused(
        h.unmask("hospital-b", &s9, &with_sigs, &q9).await,
        &["only 2 survivors signed", "needs 3"],
    );
    // What the harness holds of this session is masked vectors and no
    // share or seed: every one of them still looks like noise.
    for (n, m) in &answers {
        assert!(m.vector[0] > u128::from(u64::MAX), "{n}");
    }

    // 7. A revoked member: hospital-d's certificate revoked, hospital-a
    // opened again with the new revocation list.
    h.sb.ca
        .revoke(
            &plexus_tls::RevokeTarget::Name("hospital-d".into()),
            plexus_tls::RevocationReason::KeyCompromise,
            7,
        )
        .unwrap();
    let Harness {
        sb,
        mut runners,
        key,
        study,
    } = h;
    runners.remove("hospital-a");
    runners.insert(
        "hospital-a".into(),
        plexus_node::open_runner(sb.node_configs["hospital-a"].clone(), RunOptions::default())
            .await
            .unwrap(),
    );
    let h = Harness {
        sb,
        runners,
        key,
        study,
    };
    let s10 = sid(10);
    let q10 = cohort(54);
    let roster = h.roster(&s10, &NODES, &q10).await;
    refused(
        h.mask("hospital-a", &roster, 1, &q10).await,
        &["roster member hospital-d", "revoked"],
    );

    // Every refusal is in hospital-a's own log, naming what was refused.
    let log = plexus_node::log::JobLog::read_all(
        &h.sb.node_configs["hospital-a"]
            .node
            .state_dir
            .join("jobs.log.jsonl"),
    )
    .unwrap();
    let refusals: Vec<&str> = log
        .iter()
        .filter(|e| e.outcome == "refused:policy")
        .map(|e| e.detail.as_str())
        .collect();
    for needle in [
        "forged or altered keys",
        "not issued by the network CA",
        "not a node of study",
        "revoked",
        "differs from the roster",
        "already contributed",
        "never both",
    ] {
        assert!(
            refusals.iter().any(|d| d.contains(needle)),
            "{needle}: {refusals:#?}"
        );
    }
}
