//! The PostgreSQL the other tests use is there (or the test says how to
//! enable it), and a throwaway database can be made, used and dropped.

use plexus_tests::pg::TestDatabase;
use sqlx::{Connection, Row};

#[tokio::test]
async fn a_throwaway_database_is_created_used_and_dropped() {
    let Some(db) = TestDatabase::create("smoke").await else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect to the new database");
    let row = sqlx::query("SELECT current_database() AS name, $1::int4 + 1 AS n")
        .bind(41_i32)
        .fetch_one(&mut conn)
        .await
        .expect("query");
    assert_eq!(row.get::<String, _>("name"), db.name());
    assert_eq!(row.get::<i32, _>("n"), 42);
    conn.close().await.expect("close");
    let (url, name) = (db.url().to_string(), db.name().to_string());
    db.drop_now().await;
    let gone = sqlx::PgConnection::connect(&url).await;
    assert!(gone.is_err(), "database {name} still exists after drop_now");
}
