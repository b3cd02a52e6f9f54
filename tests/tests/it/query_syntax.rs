//! The query verbs of the `plexus` CLI and the text form of query files,
//! against a coordinator and three nodes run as processes: the text
//! becomes the tree its JSON form gives, so asking again in the other form
//! is answered from the cache and costs no budget.

use std::time::Duration;

use plexus_core::pool::{PooledResult, PooledValue};
use plexus_tests::processes::{Daemon, Install, InstallOptions};

/// `plexus --as alice VERB ARGS --study ID --output json`.
async fn verb(install: &Install, args: &[&str]) -> anyhow::Result<String> {
    let study = install.study.id.clone();
    let mut all = args.to_vec();
    all.extend(["--study", &study, "--output", "json", "--wait-secs", "120"]);
    install.cli("alice", &all).await
}

async fn pooled(install: &Install, args: &[&str]) -> PooledResult {
    let out = verb(install, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out}: {e}"))
}

fn cached(r: &PooledResult) -> bool {
    r.privacy.as_ref().is_some_and(|p| p.cached)
}

/// A coordinator and three nodes, live, with deploy/study.toml registered.
async fn network(opts: InstallOptions) -> (Install, Vec<Daemon>) {
    let install = Install::new(opts).await.unwrap();
    let coordinator = install.start_coordinator().unwrap();
    let nodes = install.start_nodes().unwrap();
    let names: Vec<&str> = install.nodes.iter().map(String::as_str).collect();
    install
        .wait_live(&names, true, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", coordinator.log()));
    install.register_study().await.unwrap();
    let mut daemons = vec![coordinator];
    daemons.extend(nodes.into_values());
    (install, daemons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_verbs_answer_and_share_the_tree_forms_cache() {
    let (install, _daemons) = network(InstallOptions::default()).await;

    // A count asked as a tree, then as text: the same query, answered
    // from the cache.
    let tree = install
        .query(
            "count-tree",
            r#"{"cohort": {"and": [{"compare": {"variable": "age", "op": ">=", "value": 65}},
                                   {"in": {"variable": "smoking", "values": ["former", "current"]}}]},
                "analysis": {"count": {}}}"#,
        )
        .await
        .unwrap();
    assert!(!cached(&tree), "{tree:?}");
    let text = pooled(
        &install,
        &[
            "count",
            "--where",
            r#"age >= 65 & smoking %in% c("former", "current")"#,
        ],
    )
    .await;
    assert_eq!(text.value, tree.value);
    assert!(
        cached(&text),
        "the text form missed the tree form's cache: {text:?}"
    );
    assert_eq!(text.provenance.answered, 3, "{:?}", text.provenance);

    // Kaplan-Meier curves by group, drawn to a file.
    let plot = install.root.join("km.png");
    let plot_arg = plot.display().to_string();
    let km = pooled(
        &install,
        &[
            "km",
            "Surv(followup_days, death) ~ diabetes",
            "--grid",
            "0:1826:30",
            "--plot",
            &plot_arg,
        ],
    )
    .await;
    let PooledValue::KaplanMeier(curves) = &km.value else {
        panic!("not kaplan_meier: {km:?}");
    };
    assert_eq!(curves.curves.len(), 2, "one curve per level of diabetes");
    assert!(std::fs::metadata(&plot).unwrap().len() > 0);

    // One summary per level of sex, printed together.
    let out = verb(&install, &["summary", "bmi", "--by", "sex"])
        .await
        .unwrap();
    let levels: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let named: Vec<&str> = levels
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["F", "M"], "{out}");
    for level in &levels {
        assert_eq!(level["by"], "sex");
        assert_eq!(level["result"]["value"]["kind"], "summary", "{level}");
    }

    // A typo is refused before anything is sent, with the column, the
    // nearest name and a caret.
    let e = verb(&install, &["count", "--where", "agee >= 65"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "where: column 1: no variable \"agee\" in the dictionary; did you mean \"age\"?"
        ),
        "{e}"
    );
    assert!(e.contains("  agee >= 65\n  ^"), "{e}");
}

/// Models from formulas, in an exact study so that answers compare
/// exactly: a GLM from a query file in the text form equals the tree
/// form's and the verb's; a Cox model from its verb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_formulas_fit_the_same_models_as_the_tree_form() {
    let opts = InstallOptions {
        exact: true,
        ..InstallOptions::default()
    };
    let (install, _daemons) = network(opts).await;

    let tree = install
        .query(
            "glm-tree",
            r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 65}},
                "analysis": {"glm": {"family": "binomial", "outcome": "death",
                                     "covariates": ["age", "diabetes"]}}}"#,
        )
        .await
        .unwrap();
    let PooledValue::Glm(glm) = &tree.value else {
        panic!("not a glm: {tree:?}");
    };
    assert_eq!(glm.coefficients.len(), 3, "{glm:?}");
    let file = install
        .query(
            "glm-text",
            r#"{"where": "age >= 65",
                "analysis": {"glm": {"formula": "death ~ age + diabetes", "family": "binomial"}}}"#,
        )
        .await
        .unwrap();
    assert_eq!(file.value, tree.value);
    let verb = pooled(
        &install,
        &[
            "glm",
            "death ~ age + diabetes",
            "--family",
            "binomial",
            "--where",
            "65 <= age",
        ],
    )
    .await;
    assert_eq!(verb.value, tree.value);

    let cox = pooled(
        &install,
        &[
            "cox",
            "Surv(followup_days, death) ~ age + diabetes",
            "--ties",
            "breslow",
        ],
    )
    .await;
    let PooledValue::Cox(fit) = &cox.value else {
        panic!("not a cox model: {cox:?}");
    };
    assert_eq!(fit.coefficients.len(), 2, "{fit:?}");
}
