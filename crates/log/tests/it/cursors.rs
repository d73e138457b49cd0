//! Subscriber cursors and their owners: a new cursor belongs to its writer, another identity can
//! neither move nor delete it, a privileged writer can and claims nothing, an unowned one is claimed
//! by the first identity that moves it, the limits count per owner and in all, and a restore keeps
//! owners (or none) as given.
use serde_json::value::RawValue;
use uuid::Uuid;

use claims_ledger_log::import::Importer;
use claims_ledger_log::{
    AppendRequest, CursorActor, CursorLimits, EventLog, LogError, LogOptions, NewEvent,
};

fn one_event(i: usize) -> AppendRequest {
    AppendRequest {
        events: vec![NewEvent {
            event_id: Uuid::new_v4(),
            stream: format!("claim-{i}"),
            event_type: "ClaimAsserted".into(),
            schema_version: 1,
            payload: RawValue::from_string("{}".into()).expect("json"),
        }],
        expectations: vec![],
        idempotency: None,
        recorded_by: "test".into(),
        correlation_id: None,
        causation_id: None,
    }
}

fn as_(identity: &str) -> CursorActor<'_> {
    CursorActor {
        identity: Some(identity),
        privileged: false,
    }
}

const ADMIN: CursorActor<'static> = CursorActor {
    identity: Some("ops"),
    privileged: true,
};

fn owner(log: &EventLog, name: &str) -> Option<String> {
    log.cursor_entry(name).expect("read").expect("exists").owner
}

#[tokio::test]
async fn cursors_belong_to_their_writer_within_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        cursor_limits: CursorLimits {
            per_owner: 2,
            total: 3,
        },
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path(), options, None).expect("open");
    for i in 0..5 {
        log.append(one_event(i)).await.expect("append");
    }
    assert_eq!(
        log.store_cursor("a", 2, as_("alice")).await.expect("new"),
        2
    );
    assert_eq!(owner(&log, "a").as_deref(), Some("alice"));
    assert!(matches!(
        log.store_cursor("a", 4, as_("bob")).await,
        Err(LogError::CursorNotOwned { .. })
    ));
    assert!(matches!(
        log.delete_cursor("a", as_("bob")).await,
        Err(LogError::CursorNotOwned { .. })
    ));
    assert_eq!(log.cursor("a").expect("read"), Some(2));
    assert_eq!(log.store_cursor("a", 3, ADMIN).await.expect("admin"), 3);
    assert_eq!(owner(&log, "a").as_deref(), Some("alice"));

    // Unowned (as an anonymous caller stores it): the first identity to move it claims it.
    let anonymous = CursorActor {
        identity: None,
        privileged: true,
    };
    log.store_cursor("u", 1, anonymous)
        .await
        .expect("anonymous");
    assert_eq!(owner(&log, "u"), None);
    assert!(matches!(
        log.delete_cursor("u", as_("bob")).await,
        Err(LogError::CursorNotOwned { .. })
    ));
    log.store_cursor("u", 1, as_("bob")).await.expect("claim");
    assert_eq!(owner(&log, "u").as_deref(), Some("bob"));

    // Three exist then: the limit in all; alice owns two: hers.
    log.store_cursor("b", 0, as_("alice"))
        .await
        .expect("alice's second");
    assert!(matches!(
        log.store_cursor("c", 0, as_("carol")).await,
        Err(LogError::TooManyCursors {
            per_owner: false,
            limit: 3
        })
    ));
    // Claiming an unowned one adds none, so the limit in all does not stop it.
    log.store_cursor("u2", 0, anonymous)
        .await
        .expect_err("full");
    assert!(log.delete_cursor("u", as_("bob")).await.expect("own"));
    log.store_cursor("u2", 0, anonymous).await.expect("room");
    log.store_cursor("u2", 0, as_("carol"))
        .await
        .expect("claim when full");
    assert_eq!(owner(&log, "u2").as_deref(), Some("carol"));
    assert!(log.delete_cursor("u2", as_("carol")).await.expect("own"));
    assert!(matches!(
        log.store_cursor("d", 0, as_("alice")).await,
        Err(LogError::TooManyCursors {
            per_owner: true,
            limit: 2
        })
    ));
    let names: Vec<(String, Option<String>)> = log
        .cursors(None, 10)
        .expect("list")
        .into_iter()
        .map(|c| (c.name, c.owner))
        .collect();
    assert_eq!(
        names,
        [
            ("a".to_string(), Some("alice".to_string())),
            ("b".to_string(), Some("alice".to_string()))
        ]
    );

    // A restore keeps the owners it is given, and none where none is given.
    let events = log.read_all(0, false, 100).expect("read");
    let restored = tempfile::tempdir().expect("tempdir");
    let mut importer = Importer::create(restored.path()).expect("importer");
    for e in &events {
        importer.push(e).expect("push");
    }
    importer
        .put_owned_cursor("a", 3, Some("alice"))
        .expect("owned");
    importer.put_cursor("legacy", 1).expect("unowned");
    importer.finish().expect("finish");
    drop(log);
    let log = EventLog::open(restored.path(), LogOptions::default(), None).expect("open restored");
    assert_eq!(owner(&log, "a").as_deref(), Some("alice"));
    assert_eq!(log.cursor("a").expect("read"), Some(3));
    assert_eq!(owner(&log, "legacy"), None);
}
