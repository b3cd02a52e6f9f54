//! The coordinator's start-up check with real processes, as deploy/systemd
//! runs them: a log edited while the daemon was stopped stops the next
//! start with the entry named, `plexus-coordinator audit-repair` records
//! the break, and the daemon then starts and the nodes reconnect.

use std::time::Duration;

use plexus_tests::processes::{run, Install, InstallOptions};
use sqlx::sqlite::SqlitePoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_edited_while_stopped_stops_the_daemon_until_audit_repair() {
    let install = Install::new(InstallOptions::fast()).await.unwrap();
    let (coordinator, _nodes) = install.start_all().await.unwrap();
    install.register_study().await.unwrap();
    install
        .query("count", r#"{"analysis": {"count": {}}}"#)
        .await
        .unwrap();
    // A clean stop signs a last checkpoint (and seals it beside the database).
    let status = coordinator
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let db = install.path("/var/lib/plexus-coordinator/coordinator.db");
    assert!(db.with_file_name("coordinator.db.checkpoint.json").exists());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let mut refused = install.start_coordinator().unwrap();
    let status = refused.wait(Duration::from_secs(30)).await.unwrap();
    assert!(!status.success(), "{status}");
    let log = refused.log();
    assert!(
        log.contains("entry 3 (") && log.contains("edited") && log.contains("audit-repair"),
        "{log}"
    );

    let unit = install
        .unit_command("plexus-coordinator.service", None)
        .unwrap();
    let mut args: Vec<&str> = unit.exec_start[1..].iter().map(String::as_str).collect();
    args.extend([
        "audit-repair",
        "--reason",
        "test: entry 3 edited on purpose",
    ]);
    let out = run(std::path::Path::new(&unit.exec_start[0]), &args)
        .await
        .unwrap();
    assert!(out.contains("recorded the break as audit entry"), "{out}");
    assert!(out.contains("entry 3"), "{out}");

    let _coordinator = install.restart_coordinator().await.unwrap();
}
