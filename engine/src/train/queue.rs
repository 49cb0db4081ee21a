//! The job queue: jobs run one after another on one background thread, new jobs can be added
//! while one runs, and every event arrives on one channel tagged with its job's number. The
//! workbench's queue and `spawn_queue` are this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use super::runner::{JobHandle, RunOptions, run_job};
use super::spec::JobSpec;
use crate::runs::{EventSink, JobEvent};

/// An event of the job numbered `job` (numbers count from 1 in the order jobs were added).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEvent {
    pub job: u64,
    pub event: JobEvent,
}

/// A job waiting its turn.
#[derive(Debug, Clone)]
pub struct Pending {
    pub job: u64,
    pub spec: JobSpec,
}

#[derive(Default)]
struct Shared {
    pending: VecDeque<(u64, JobSpec, RunOptions)>,
    running: Option<u64>,
    next: u64,
    closed: bool,
}

/// A queue of training jobs with one worker thread.
pub struct JobQueue {
    state: Arc<(Mutex<Shared>, Condvar)>,
    cancel: Arc<AtomicBool>,
    pub events: Receiver<QueueEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for JobQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl JobQueue {
    pub fn new() -> Self {
        let (tx, rx) = channel();
        let state = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let cancel = Arc::new(AtomicBool::new(false));
        let (s, c) = (state.clone(), cancel.clone());
        let thread = std::thread::Builder::new().name("whetstone-jobs".into()).spawn(move || worker(s, c, tx)).expect("spawn job queue");
        Self { state, cancel, events: rx, thread: Some(thread) }
    }

    /// Add a job; returns its number.
    pub fn push(&self, spec: JobSpec, opts: RunOptions) -> u64 {
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("queue lock");
        s.next += 1;
        let id = s.next;
        s.pending.push_back((id, spec, opts));
        cv.notify_all();
        id
    }

    /// The jobs waiting, in order.
    pub fn pending(&self) -> Vec<Pending> {
        let s = self.state.0.lock().expect("queue lock");
        s.pending.iter().map(|(job, spec, _)| Pending { job: *job, spec: spec.clone() }).collect()
    }

    /// The number of the job running now.
    pub fn running(&self) -> Option<u64> {
        self.state.0.lock().expect("queue lock").running
    }

    /// Remove a waiting job; false if it is not waiting (running, done or unknown).
    pub fn remove(&self, job: u64) -> bool {
        let mut s = self.state.0.lock().expect("queue lock");
        let before = s.pending.len();
        s.pending.retain(|(j, _, _)| *j != job);
        s.pending.len() != before
    }

    /// Cancel the running job (it checkpoints and stops at its next step boundary).
    pub fn cancel_running(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Cancel the running job and drop every waiting one.
    pub fn cancel_all(&self) {
        self.state.0.lock().expect("queue lock").pending.clear();
        self.cancel_running();
    }
}

impl Drop for JobQueue {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.state;
            let mut s = m.lock().expect("queue lock");
            s.closed = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(state: Arc<(Mutex<Shared>, Condvar)>, cancel: Arc<AtomicBool>, tx: Sender<QueueEvent>) {
    let (m, cv) = &*state;
    loop {
        let (job, spec, opts) = {
            let mut s = m.lock().expect("queue lock");
            loop {
                if let Some(j) = s.pending.pop_front() {
                    s.running = Some(j.0);
                    break j;
                }
                if s.closed {
                    return;
                }
                s = cv.wait(s).expect("queue lock");
            }
        };
        cancel.store(false, Ordering::SeqCst);
        let out = tx.clone();
        let mut sink = EventSink::new(move |event| {
            let _ = out.send(QueueEvent { job, event });
        });
        run_job(spec, opts, &cancel, &mut sink);
        m.lock().expect("queue lock").running = None;
    }
}

/// Run jobs one after another; events of all of them arrive on one channel, and cancelling
/// stops the running job and the rest.
pub fn spawn_queue(jobs: Vec<(JobSpec, RunOptions)>) -> JobHandle {
    let (tx, rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let thread = std::thread::spawn(move || {
        for (spec, opts) in jobs {
            if c.load(Ordering::SeqCst) {
                break;
            }
            let out = tx.clone();
            let mut sink = EventSink::new(move |e| {
                let _ = out.send(e);
            });
            run_job(spec, opts, &c, &mut sink);
        }
    });
    JobHandle::from_parts(rx, cancel, thread)
}
