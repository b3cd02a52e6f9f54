//! Consent at the node: withdrawals and opt-outs take effect on the next
//! query, and a study sees only patients whose consent covers its purpose.

use std::io::Write;

use plexus_core::pool::PooledValue;
use plexus_core::StudyDefinition;
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

async fn count(sb: &Sandbox, study: &str) -> u64 {
    let r = ask(
        sb,
        sandbox::RESEARCHER,
        study,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    match r.value {
        PooledValue::Count { n } => n.count.expect("count released"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_and_opt_out_change_the_next_answer() {
    let sb = Sandbox::start(SandboxOptions::new(600, 21)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let purpose = study.purpose().unwrap();
    let expected: usize = sb
        .sites
        .iter()
        .map(|s| consenting(s, &purpose, today()).len())
        .sum();
    assert_eq!(count(&sb, &study.id).await, expected as u64);

    // Withdraw the consent of 7 included patients at hospital-a, as of yesterday.
    let site = &sb.sites[0];
    let included: Vec<String> = consenting(site, &purpose, today())
        .iter()
        .take(7)
        .map(|p| p.patient_id.clone())
        .collect();
    let consent_path = &sb.node_configs["hospital-a"].consent.path;
    let text = std::fs::read_to_string(consent_path).unwrap();
    let yesterday = (today() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if i > 0 && included.iter().any(|id| id == fields[0]) {
            out.push_str(&format!(
                "{},{},{},{}\n",
                fields[0], fields[1], fields[2], yesterday
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(consent_path, out).unwrap();
    assert_eq!(count(&sb, &study.id).await, expected as u64 - 7);

    // Three more patients of hospital-b opt out.
    let site_b = &sb.sites[1];
    let opt: Vec<String> = consenting(site_b, &purpose, today())
        .iter()
        .take(3)
        .map(|p| p.patient_id.clone())
        .collect();
    let opt_path = sb.node_configs["hospital-b"]
        .consent
        .opt_out
        .clone()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&opt_path)
        .unwrap();
    for id in &opt {
        writeln!(f, "{id}").unwrap();
    }
    drop(f);
    assert_eq!(count(&sb, &study.id).await, expected as u64 - 10);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_sees_only_patients_whose_consent_covers_its_purpose() {
    let mut opts = SandboxOptions::new(700, 33);
    opts.dir = None;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    // A general-research study (GRU): only GRU consents cover it.
    let mut gru = sandbox::exact_study();
    gru.id = "general-methods".into();
    gru.purpose.code = "GRU".into();
    gru.purpose.disease = String::new();
    gru.purpose.modifiers = vec![];
    // An HMB study without NPU: HMB;NPU consents do not cover it.
    let mut hmb: StudyDefinition = sandbox::exact_study();
    hmb.id = "cv-risk".into();
    hmb.purpose.code = "HMB".into();
    hmb.purpose.disease = String::new();
    hmb.purpose.modifiers = vec![];
    for cfg in sb.node_configs.values_mut() {
        for study in [&gru, &hmb] {
            cfg.policy.approve(study);
            cfg.policy.exact_studies.insert(study.id.clone());
        }
    }
    sb.start_all().await.unwrap();
    let demo = sandbox::exact_study();
    for study in [&demo, &gru, &hmb] {
        sb.register_study(study).await.unwrap();
        let purpose = study.purpose().unwrap();
        let expected: usize = sb
            .sites
            .iter()
            .map(|s| consenting(s, &purpose, today()).len())
            .sum();
        assert_eq!(
            count(&sb, &study.id).await,
            expected as u64,
            "study {}",
            study.id
        );
    }
    let c_demo = count(&sb, &demo.id).await;
    let c_gru = count(&sb, &gru.id).await;
    let c_hmb = count(&sb, &hmb.id).await;
    let all: usize = sb.sites.iter().map(|s| s.patients.len()).sum();
    assert!(
        c_gru < c_hmb && c_hmb < all as u64,
        "gru {c_gru} hmb {c_hmb} all {all}"
    );
    assert!(
        c_demo > c_hmb,
        "the AAA study (DS + NPU) is covered by GRU, HMB, HMB;NPU and its own DS consents"
    );
    sb.shutdown().await.unwrap();
}
