//! Group commit of durable writes (issuance records, verification records): callers hand
//! their write, each with its audit event, to one committer thread and wait; the committer
//! takes every write that is waiting (up to a maximum count), applies them in one transaction
//! through [`Store::grouped_writes`] - one fsync for the whole group, audit appends in the
//! same transaction, so the hash chain grows in commit order - and answers each caller with
//! its own result once the transaction is durable. A caller therefore never goes on (to the
//! HSM, or to answer its client) before its own record is on disk.
//!
//! Groups form on their own: writes that arrive while a group commits make the next one. The
//! committer never waits for more: a window (1 ms for as long as issuances were in flight)
//! cost 12-15% of issuance throughput on this machine, because the writes it waited for were
//! mostly still in the HSM.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;

use super::{Applied, CertRecord, GroupedWrite, ReplayKeys, Result, Store, StoreError, WriteUnit};
use crate::audit::{AuditEvent, AuditRecord};

/// An engine's open transaction, as grouped writes need it: each engine writes its own SQL
/// for the three kinds of write, [`GroupTransaction::apply`] picks the one a write needs.
pub(super) trait GroupTransaction {
    /// Records a to-be-signed certificate (status pending) and its audit event.
    fn insert_pending(&mut self, rec: &CertRecord, event: &AuditEvent) -> Result<AuditRecord>;

    /// Stores the signed certificate of a pending record and its audit event.
    fn complete_pending(
        &mut self,
        serial: &str,
        cert_der: &[u8],
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;

    /// The replay guard's keys and the audit event of one verification (see
    /// [`Store::record_verification`]).
    fn apply_verification(
        &mut self,
        guard: Option<&ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: &dyn Fn(Option<i64>) -> AuditEvent,
    ) -> Result<Applied>;

    /// One write of a group, inside the group's transaction.
    fn apply(&mut self, write: &GroupedWrite) -> Result<Applied> {
        let audit_only = |audit| Applied {
            audit,
            first_seen: None,
        };
        match write {
            GroupedWrite::Pending { record, event } => {
                self.insert_pending(record, event).map(audit_only)
            }
            GroupedWrite::Complete {
                serial,
                cert_der,
                at,
                event,
            } => self
                .complete_pending(serial, cert_der, *at, event)
                .map(audit_only),
            GroupedWrite::Verification {
                guard,
                at,
                window_secs,
                event,
            } => self.apply_verification(guard.as_ref(), *at, *window_secs, &*event.0),
        }
    }

    /// A unit's writes, in order; the first that fails fails the unit (the caller rolls the
    /// unit back).
    fn apply_unit(&mut self, unit: &[GroupedWrite]) -> Result<Vec<Applied>> {
        unit.iter().map(|w| self.apply(w)).collect()
    }
}

/// Largest group: bounds one transaction's time and the memory of its results.
const MAX_GROUP: usize = 256;

struct Job {
    unit: WriteUnit,
    reply: mpsc::SyncSender<Result<Vec<Applied>>>,
}

/// The committer: a thread that owns the grouping; cheap to share and to clone. The thread
/// ends when the last clone is dropped (after answering what it was given).
#[derive(Clone)]
pub struct GroupCommit {
    sender: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<dyn Store>) -> GroupCommit {
        Self::start_applying(move |writes| store.grouped_writes(writes))
    }

    /// Starts the committer thread with what commits a group (the store, or a test's stand-in).
    fn start_applying(
        commit: impl Fn(&[WriteUnit]) -> GroupResults + Send + 'static,
    ) -> GroupCommit {
        let (sender, jobs) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("signet-group-commit".into())
            .spawn(move || run(&commit, &jobs));
        if let Err(e) = spawned {
            // Without the thread every write answers Unavailable (the receiver is gone).
            tracing::error!(error = %e, "cannot start the group-commit thread");
        }
        GroupCommit { sender }
    }

    /// Applies one write with the next group; returns once it is durable (or failed).
    pub fn write(&self, write: GroupedWrite) -> Result<Applied> {
        self.write_all(vec![write])
            .pop()
            .unwrap_or_else(|| Err(stopped()))
    }

    /// Applies several writes, in order, with the next group (or groups); returns once each is
    /// durable (or failed), with each write's own result. Handed in together, they nearly
    /// always share one transaction: a batch of verifications costs one fsync, not one each.
    pub fn write_all(&self, writes: Vec<GroupedWrite>) -> Vec<Result<Applied>> {
        self.write_units(writes.into_iter().map(|w| vec![w]).collect())
            .into_iter()
            .map(|unit| unit?.pop().ok_or_else(unanswered))
            .collect()
    }

    /// Applies several units of writes, in order, with the next group (or groups): each unit
    /// stands or falls whole. Returns once each is durable (or failed), with each unit's
    /// results, one per write.
    pub fn write_units(&self, units: Vec<WriteUnit>) -> Vec<Result<Vec<Applied>>> {
        let answers: Vec<_> = units
            .into_iter()
            .map(|unit| {
                let expected = unit.len();
                let (reply, answer) = mpsc::sync_channel(1);
                self.sender
                    .send(Job { unit, reply })
                    .ok()
                    .map(|()| (answer, expected))
            })
            .collect();
        answers
            .into_iter()
            .map(|answer| {
                let (answer, expected) = answer.ok_or_else(stopped)?;
                let applied = answer.recv().map_err(|_| stopped())??;
                if applied.len() == expected {
                    Ok(applied)
                } else {
                    Err(unanswered())
                }
            })
            .collect()
    }
}

fn unanswered() -> StoreError {
    StoreError::Corrupt("the store did not answer every write of a unit".into())
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the group-commit thread has stopped".into())
}

/// The results of a group's writes, each its own (or the group's failure as a whole).
type GroupResults = Result<Vec<Result<Vec<Applied>>>>;

fn run(commit: &dyn Fn(&[WriteUnit]) -> GroupResults, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let (units, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|j| (j.unit, j.reply)).unzip();
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| commit(&units))).unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the store failed while committing a group of writes".into(),
                ))
            });
        match outcome {
            Ok(results) if results.len() == replies.len() => {
                for (result, reply) in results.into_iter().zip(replies) {
                    // A caller that has gone away (it cannot, it waits) needs no answer.
                    let _ = reply.send(result);
                }
            }
            Ok(results) => {
                let why = format!(
                    "the store answered {} of {} grouped writes",
                    results.len(),
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Corrupt(why.clone())));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The same failure for each caller of a group that failed as a whole.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::SerialTaken(m) => StoreError::SerialTaken(m.clone()),
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain_hash, AuditEvent, GENESIS};
    use crate::ca::IssuerId;
    use crate::store::{CertRecord, CertStatus, SqliteStore};

    fn pending(serial: &str) -> GroupedWrite {
        GroupedWrite::Pending {
            record: CertRecord {
                serial: serial.into(),
                issuer: IssuerId::Customer,
                profile: "customer".into(),
                status: CertStatus::Pending,
                subject: "CN=x".into(),
                subject_serial_digest: None,
                shard: 0,
                not_before: 1,
                not_after: 2,
                tbs_der: vec![0x30, 0x00],
                cert_der: None,
                created_at: 1,
                revocation: None,
                owner: None,
                key_id: None,
            },
            event: AuditEvent::new("test", "certificate.record", serial, serde_json::json!({})),
        }
    }

    fn complete(serial: &str) -> GroupedWrite {
        GroupedWrite::Complete {
            serial: serial.into(),
            cert_der: vec![0x30, 0x01, serial.len() as u8],
            at: 2,
            event: AuditEvent::new("test", "certificate.issue", serial, serde_json::json!({})),
        }
    }

    fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("signet.db")).expect("open store");
        (dir, Arc::new(store))
    }

    /// Every event links to the one before it (sequence and hash).
    fn assert_chain_whole(store: &dyn Store) {
        let events = store.audit_events(0).expect("events");
        let mut prev = GENESIS.to_vec();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.prev_hash, prev);
            let ev = AuditEvent {
                actor: e.actor.clone(),
                action: e.action.clone(),
                object: e.object.clone(),
                details: e.details.clone(),
                tenant: e.tenant.clone(),
            };
            assert_eq!(e.hash, chain_hash(&prev, e.seq, e.at, &ev).to_vec());
            prev = e.hash.clone();
        }
    }

    #[test]
    fn a_failing_write_in_a_group_leaves_the_others_applied() {
        let (_dir, store) = store();
        let results = store
            .grouped_writes(&[
                vec![pending("01")],
                vec![pending("01")],
                vec![pending("02")],
                vec![complete("03")],
            ])
            .expect("group commits");
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(StoreError::SerialTaken(_))));
        assert!(results[2].is_ok());
        assert!(matches!(results[3], Err(StoreError::Conflict(_))));
        for serial in ["01", "02"] {
            let rec = store.certificate(serial).unwrap().expect("recorded");
            assert_eq!(rec.status, CertStatus::Pending);
        }
        assert!(store.certificate("03").unwrap().is_none());
        // Two events, for the two writes that were applied.
        assert_eq!(store.audit_events(0).unwrap().len(), 2);
        assert_chain_whole(&*store);
    }

    #[test]
    fn a_unit_whose_last_write_fails_leaves_none_of_its_writes_applied() {
        let (_dir, store) = store();
        let commits = GroupCommit::start(store.clone());
        let results = commits.write_units(vec![
            vec![pending("01")],
            // "02" would be recorded, but "03" was never pending: the unit fails whole.
            vec![pending("02"), complete("03")],
            vec![pending("04"), complete("04")],
        ]);
        assert_eq!(results[0].as_ref().expect("applied").len(), 1);
        assert!(
            matches!(results[1], Err(StoreError::Conflict(_))),
            "{:?}",
            results[1].as_ref().err()
        );
        let unit = results[2].as_ref().expect("applied");
        assert_eq!(unit.len(), 2, "one result per write of the unit");
        assert!(store.certificate("02").unwrap().is_none());
        assert_eq!(
            store.certificate("04").unwrap().expect("recorded").status,
            CertStatus::Issued
        );
        // Three events: the first unit's one and the last unit's two.
        assert_eq!(store.audit_events(0).unwrap().len(), 3);
        assert_chain_whole(&*store);
    }

    #[test]
    fn writes_that_arrive_while_a_group_commits_are_committed_together_in_the_next() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Condvar, Mutex};
        use std::time::Duration;
        // A stand-in store whose first commit is held until nine more writers have handed in
        // their writes; it notes the size of every group.
        let entered = Arc::new(AtomicBool::new(false));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let commits = {
            let (entered, gate, sizes) = (entered.clone(), gate.clone(), sizes.clone());
            GroupCommit::start_applying(move |units| {
                entered.store(true, Ordering::SeqCst);
                let (open, opened) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
                sizes.lock().unwrap().push(units.len());
                Ok(units
                    .iter()
                    .map(|unit| {
                        let [GroupedWrite::Pending { record, .. }] = unit.as_slice() else {
                            unreachable!("only single pending writes here")
                        };
                        Ok(vec![Applied {
                            audit: AuditRecord {
                                seq: 0,
                                at: 0,
                                actor: String::new(),
                                action: String::new(),
                                object: record.serial.clone(),
                                details: String::new(),
                                tenant: None,
                                prev_hash: Vec::new(),
                                hash: Vec::new(),
                            },
                            first_seen: None,
                        }])
                    })
                    .collect())
            })
        };
        let handed_in = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let first = s.spawn(|| commits.write(pending("00")));
            while !entered.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let writers: Vec<_> = (1..10)
                .map(|i| {
                    let (commits, handed_in) = (&commits, &handed_in);
                    s.spawn(move || {
                        handed_in.fetch_add(1, Ordering::SeqCst);
                        commits.write(pending(&format!("{i:02}")))
                    })
                })
                .collect();
            while handed_in.load(Ordering::SeqCst) < 9 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Each writer sends right after counting itself; give the last ones time to.
            std::thread::sleep(Duration::from_millis(200));
            let (open, opened) = &*gate;
            *open.lock().unwrap() = true;
            opened.notify_all();
            // Each caller gets its own write's answer.
            assert_eq!(first.join().unwrap().unwrap().audit.object, "00");
            for (i, w) in writers.into_iter().enumerate() {
                let answer = w.join().unwrap().unwrap();
                assert_eq!(answer.audit.object, format!("{:02}", i + 1));
            }
        });
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10, "{sizes:?}");
        assert_eq!(
            sizes[0], 1,
            "the first write was committed alone: {sizes:?}"
        );
        assert_eq!(
            sizes[1..],
            [9],
            "the nine waiting writes make one group: {sizes:?}"
        );
    }

    #[test]
    fn writes_handed_in_together_are_applied_in_order_each_with_its_own_result() {
        let (_dir, store) = store();
        let commits = GroupCommit::start(store.clone());
        let results = commits.write_all(vec![
            pending("01"),
            pending("01"),
            pending("02"),
            complete("01"),
        ]);
        assert_eq!(results.len(), 4);
        let object = |r: &Result<Applied>| r.as_ref().expect("applied").audit.object.clone();
        assert_eq!(object(&results[0]), "01");
        assert!(matches!(results[1], Err(StoreError::SerialTaken(_))));
        assert_eq!(object(&results[2]), "02");
        // In order: the completion finds the pending record written before it.
        assert_eq!(object(&results[3]), "01");
        let seqs: Vec<u64> = [&results[0], &results[2], &results[3]]
            .iter()
            .map(|r| r.as_ref().unwrap().audit.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(
            store.certificate("01").unwrap().expect("recorded").status,
            CertStatus::Issued
        );
        assert_chain_whole(&*store);
    }

    #[test]
    fn concurrent_issuances_through_the_committer_are_all_recorded_in_one_whole_chain() {
        let (_dir, store) = store();
        let commits = GroupCommit::start(store.clone());
        std::thread::scope(|s| {
            for t in 0..8 {
                let commits = &commits;
                s.spawn(move || {
                    for i in 0..10 {
                        let serial = format!("{t:02x}{i:02x}");
                        commits.write(pending(&serial)).expect("pending");
                        commits.write(complete(&serial)).expect("complete");
                    }
                });
            }
        });
        assert_eq!(store.certificates().unwrap().len(), 80);
        assert_eq!(store.audit_events(0).unwrap().len(), 160);
        assert_chain_whole(&*store);
    }
}
