use super::*;
use crate::lifecycle::{Changes, Detection, DetectionKind, HistoryEntry};

const S: u64 = 1_000_000_000;

fn order(id: &str, status: &str, at: u64, open: bool) -> OrderState {
    let mut order = OrderState::new(id, at);
    order.status = Some(status.into());
    order.last_activity = at;
    order.history.push(HistoryEntry {
        status: status.into(),
        at,
        service: "shop-api".into(),
        rule: "shop.create".into(),
        span_id: "0707070707070707".into(),
    });
    order.detections.push(Detection {
        id: Detection::id_for(id, DetectionKind::Stuck, "FILE_UPLOADED"),
        order_id: id.into(),
        kind: DetectionKind::Stuck,
        step: "FILE_UPLOADED".into(),
        service: "shop-api".into(),
        at: at + S,
        resolved_at: (!open).then_some(at + 2 * S),
    });
    order
}

#[test]
fn orders_and_open_detections_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let mut store = Store::open(&path).unwrap();
        store
            .save_orders(&[
                order("SO-1", "INITIATED", 10 * S, true),
                order("SO-2", "CLOSED", 20 * S, false),
            ])
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    let mut active = store.load_active().unwrap();
    active.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    assert_eq!(
        active,
        vec![
            order("SO-1", "INITIATED", 10 * S, true),
            order("SO-2", "CLOSED", 20 * S, false)
        ]
    );
    let open = store
        .detections(&DetectionQuery {
            open: Some(true),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].order_id, "SO-1");
    let journal: String = store
        .conn()
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn lists_filter_and_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    let orders: Vec<_> = (0..5)
        .map(|i| {
            order(
                &format!("SO-{i}"),
                if i % 2 == 0 { "INITIATED" } else { "SHIPPED" },
                i * S,
                true,
            )
        })
        .collect();
    store.save_orders(&orders).unwrap();
    let page = store
        .list_orders(&OrderQuery {
            status: Some("INITIATED".into()),
            limit: 2,
            offset: 0,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.iter().map(|o| o.order_id.as_str()).collect::<Vec<_>>(),
        ["SO-4", "SO-2"]
    );
    let next = store
        .list_orders(&OrderQuery {
            status: Some("INITIATED".into()),
            limit: 2,
            offset: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(next.len(), 1);
    let by_service = store
        .detections(&DetectionQuery {
            service: Some("mes-api".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(by_service.is_empty());
    let newest = store
        .detections(&DetectionQuery {
            kind: Some(DetectionKind::Stuck),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest[0].order_id, "SO-4");
}

#[test]
fn audit_is_append_only_and_retention_purges_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    for (at, who) in [(S, "old"), (100 * S, "new")] {
        store
            .append_audit(&AuditEntry {
                at,
                who: who.into(),
                action: "GET /api/v1/orders/{id}".into(),
                order_id: Some("SO-1".into()),
                result: "200".into(),
            })
            .unwrap();
    }
    let err = store
        .conn()
        .execute("UPDATE audit SET who = 'x'", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // No policy yet: nothing may be deleted. With one, only what is older than it.
    let err = store.conn().execute("DELETE FROM audit", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let now = crate::clock::unix_now();
    store.set_audit_retention(now - 50 * S).unwrap();
    let err = store
        .conn()
        .execute("DELETE FROM audit WHERE who = 'new'", [])
        .unwrap_err();
    assert!(err.to_string().contains("retention"), "{err}");

    let mut changes = Changes::default();
    changes
        .forgotten
        .insert("SO-old".into(), order("SO-old", "CLOSED", S, false));
    changes
        .orders
        .insert("SO-live".into(), order("SO-live", "INITIATED", S, true));
    store.save(&changes, &[]).unwrap();
    // Orders and audit on their own clocks: the old order goes, the old audit record stays
    // while the audit's cutoff is earlier.
    store.purge(50 * S, 0).unwrap();
    assert_eq!(store.audit_entries(10, 0).unwrap().len(), 2);
    store.purge(50 * S, 50 * S).unwrap();
    assert!(store.order("SO-old").unwrap().is_none());
    assert!(
        store.order("SO-live").unwrap().is_some(),
        "followed orders are kept"
    );
    let audit = store.audit_entries(10, 0).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].who, "new");
    let left = store
        .detections(&DetectionQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(left.iter().all(|d| d.order_id == "SO-live"));
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Store::open(&path).err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn the_inbox_changes_with_the_orders_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let span = crate::lifecycle::tests::span_of("SO-1");
    {
        let mut store = Store::open(&path).unwrap();
        let mut first = Changes::default();
        first.inbox_added.insert(1, (5, span.clone()));
        first.inbox_added.insert(2, (6, span.clone()));
        store.save(&first, &[]).unwrap();
        let mut second = Changes::default();
        second
            .orders
            .insert("SO-1".into(), order("SO-1", "INITIATED", S, true));
        second.inbox_removed.insert(1);
        store.save(&second, &[]).unwrap();
        store
            .save_orders(&[order("SO-2", "INITIATED", S, true)])
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.load_inbox().unwrap(), vec![(2, 6, span)]);
    assert_eq!(store.load_active().unwrap().len(), 2);
}

#[test]
fn given_up_orders_keep_their_final_state_but_are_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    let mut changes = Changes::default();
    changes
        .forgotten
        .insert("SO-1".into(), order("SO-1", "SHIPPED", S, false));
    store.save(&changes, &[]).unwrap();
    assert!(store.load_active().unwrap().is_empty());
    assert_eq!(
        store.order("SO-1").unwrap().unwrap().detections[0].resolved_at,
        Some(3 * S)
    );
}

#[test]
fn alerts_are_queued_per_target_with_their_detection_and_leave_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("t.db")).unwrap();
    let raised = order("SO-1", "INITIATED", S, true).detections[0].clone();
    let mut resolved = raised.clone();
    resolved.resolved_at = Some(5 * S);
    let mut changes = Changes::default();
    changes
        .orders
        .insert("SO-1".into(), order("SO-1", "INITIATED", S, true));
    changes.alerts = vec![raised.clone(), resolved.clone()];
    store.save(&changes, &["webhook", "alertmanager"]).unwrap();
    let queued = store.pending_alerts("webhook", 10).unwrap();
    assert_eq!(
        queued.iter().map(|a| &a.detection).collect::<Vec<_>>(),
        [&raised, &resolved],
        "in the order they happened"
    );
    store.alert_failed(queued[0].seq, "503").unwrap();
    let again = store.pending_alerts("webhook", 1).unwrap();
    assert_eq!((again[0].seq, again[0].attempts), (queued[0].seq, 1));
    store.alerts_delivered(&[queued[0].seq]).unwrap();
    assert_eq!(store.pending_alerts("webhook", 10).unwrap().len(), 1);
    assert_eq!(store.pending_alerts("alertmanager", 10).unwrap().len(), 2);
    // A target no longer configured keeps nothing queued.
    assert_eq!(store.drop_alerts_except(&["webhook"]).unwrap(), 2);
    assert!(store.pending_alerts("alertmanager", 10).unwrap().is_empty());
    // Over the bound, the oldest go first.
    assert_eq!(store.trim_alerts("webhook", 0).unwrap(), 1);
    assert_eq!(store.pending_alert_count().unwrap(), 0);
}
