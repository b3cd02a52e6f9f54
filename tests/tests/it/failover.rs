//! Two coordinators on one PostgreSQL database, active/standby under a
//! lease: the standby refuses calls naming the active one; when the active
//! one dies mid-query the standby takes over, the nodes reconnect to it,
//! the interrupted query ends failed with a retryable error and its
//! resubmission succeeds; no job, result or audit entry is lost or
//! duplicated, and the log rebuilt by the new active one extends the last
//! checkpoint the old one signed.
//!
//! Needs `PLEXUS_TEST_DATABASE_URL` (see `plexus_tests::pg`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use plexus::audit;
use plexus_client::Client;
use plexus_core::pool::PooledValue;
use plexus_core::Query;
use plexus_proto::v1 as pb;
use plexus_tests::pg::TestDatabase;
use plexus_tests::{consenting, sandbox, today, Sandbox, SandboxOptions};
use plexus_tls::TlsFiles;

const COUNT: &str = r#"{"analysis": {"count": {}}}"#;

/// The lease's holder and epoch (none before the first coordinator
/// migrated the database and took it).
async fn holder(pool: &sqlx::PgPool) -> Option<(String, i64)> {
    sqlx::query_as("SELECT holder, epoch FROM coordinator_lease WHERE id = 1")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
}

async fn wait_for_holder(pool: &sqlx::PgPool, who: &str) -> i64 {
    for _ in 0..400 {
        if let Some((h, epoch)) = holder(pool).await {
            if h == who {
                return epoch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{who} never became active: {:?}", holder(pool).await);
}

fn count_of(r: &pb::QueryResult) -> u64 {
    let pooled = plexus_client::outcome(r).unwrap();
    match pooled.value {
        PooledValue::Count { n } => n.count.expect("count released"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_active_coordinator_dies() {
    let Some(db) = TestDatabase::create("coord_failover").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let mut opts = SandboxOptions::new(300, 83);
    opts.database_url = Some(db.url().to_string());
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    sb.coordinator_config.coordinator.instance = Some("coordinator-a".into());
    // Short enough for a quick takeover, long enough that a busy shared
    // PostgreSQL (other tests load and analyse whole databases on it at
    // the same time) does not make the active coordinator miss renewals
    // and step down before it is killed: 1500 ms did, once in CI.
    sb.coordinator_config.coordinator.lease_ttl_ms = 4000;
    // B: the same network key, certificate and database; its own address and name.
    let listener_b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url_b = format!("https://{}", listener_b.local_addr().unwrap());
    let mut config_b = sb.coordinator_config.clone();
    config_b.coordinator.instance = Some("coordinator-b".into());
    config_b.coordinator.listen = listener_b.local_addr().unwrap();
    sb.add_coordinator(&url_b);
    // Each job takes a while at the nodes, so a query is in flight when
    // the active coordinator dies.
    for node in sb.node_names() {
        sb.set_node_options(
            &node,
            plexus_node::RunOptions {
                job_delay: Duration::from_millis(1500),
                ..Default::default()
            },
        );
    }

    sb.start_coordinator().await.unwrap();
    assert_eq!(wait_for_holder(&pool, "coordinator-a").await, 1);
    let token_b = CancellationToken::new();
    let b = tokio::spawn(plexus_coordinator::run(
        config_b,
        listener_b,
        token_b.clone(),
    ));
    for node in sb.node_names() {
        sb.start_node(&node).await.unwrap();
    }
    sb.wait_all_live().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();

    // The standby refuses calls and names the active one.
    let files = TlsFiles::in_dir(&sb.pki, sandbox::RESEARCHER);
    let direct_b = Client::connect_with(&url_b, &files, Some("localhost".into()))
        .await
        .unwrap();
    let refused = direct_b
        .research()
        .list_studies(pb::ListStudiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains(
            "this coordinator (coordinator-b) is on standby, the active one is coordinator-a"
        ),
        "{refused:?}"
    );

    let purpose = study.purpose().unwrap();
    let expected: u64 = sb
        .sites
        .iter()
        .map(|s| consenting(s, &purpose, today()).len() as u64)
        .sum();
    let query = Query::from_json(COUNT).unwrap();
    let researcher = sb.client(sandbox::RESEARCHER).await.unwrap();
    let r = researcher
        .run_query(&study.id, &query, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(count_of(&r), expected);
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let signed_by_a = audit::verify(&auditor, &key, None, true)
        .await
        .unwrap()
        .checkpoint;

    // Kill A mid-query.
    let in_flight = researcher
        .research()
        .submit_query(pb::SubmitQueryRequest {
            study_id: study.id.clone(),
            query: Some((&query).into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .query_id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sb.kill_coordinator().await;

    // B takes over with the next epoch; the nodes find it.
    assert_eq!(wait_for_holder(&pool, "coordinator-b").await, 2);
    sb.wait_all_live().await.unwrap();
    let researcher = sb.client(sandbox::RESEARCHER).await.unwrap();
    let interrupted = researcher
        .research()
        .get_result(pb::GetResultRequest {
            query_id: in_flight.clone(),
            wait_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    let e = plexus_client::outcome(&interrupted).unwrap_err();
    assert_eq!(e.code, plexus_core::ErrorCode::Unavailable, "{e:?}");
    assert!(e.message.contains("submit it again"), "{e:?}");
    // The resubmission succeeds at B.
    let again = researcher
        .run_query(&study.id, &query, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(count_of(&again), expected);

    // The log B rebuilt from PostgreSQL extends the checkpoint A signed.
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let report = audit::verify(&auditor, &key, Some(&signed_by_a), true)
        .await
        .unwrap();
    assert!(report.entries > signed_by_a.head.size, "{report:?}");

    // Nothing lost or duplicated.
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_events ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let takeovers: Vec<String> =
        sqlx::query_scalar("SELECT detail FROM audit_events WHERE action = 'coordinator.takeover'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(takeovers.len(), 1, "{takeovers:?}");
    assert!(
        takeovers[0]
            .contains("coordinator-b took the lease over at epoch 2 from coordinator-a (epoch 1)"),
        "{takeovers:?}"
    );
    let queries: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, error_code FROM queries ORDER BY submitted_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(queries.len(), 3, "{queries:?}");
    for (id, status, code) in &queries {
        if *id == in_flight {
            assert_eq!(
                (status.as_str(), code.as_deref()),
                ("failed", Some("unavailable"))
            );
        } else {
            assert_eq!(status, "succeeded", "{queries:?}");
        }
    }
    let duplicated_jobs: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT query_id, node_id FROM jobs GROUP BY query_id, node_id HAVING COUNT(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(duplicated_jobs, 0);
    let answered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'answered'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(answered, 6, "the two finished queries' jobs, three each");
    let jobs_of_interrupted: Vec<String> =
        sqlx::query_scalar("SELECT status FROM jobs WHERE query_id = $1")
            .bind(&in_flight)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(jobs_of_interrupted, ["interrupted"; 3]);
    // One submission and at most one result per query; a job is sent once
    // and ends once.
    let repeated: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT action, query_id, job_id, outcome FROM audit_events \
         WHERE action IN ('query.submit', 'query.result', 'job') \
         GROUP BY action, query_id, job_id, outcome HAVING COUNT(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(repeated.is_empty(), "{repeated:?}");

    token_b.cancel();
    b.await.unwrap().unwrap();
    sb.shutdown().await.unwrap();
    pool.close().await;
    db.drop_now().await;
}
