//! Sharing model calls between requests: one thread owns the model and takes the pictures of
//! every request waiting when it is free, so a lone request runs at once and requests that
//! arrive together share one call. Admission is bounded: beyond the queue's size a request is
//! refused before its body is read.

use crate::classify::Ranking;
use anyhow::Result;
use image::RgbImage;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the model gives back for a batch of pictures: one embedding per picture, and one
/// ranking per picture when rankings were asked for.
#[derive(Debug, Default)]
pub struct Output {
    /// L2-normalised embeddings, in the pictures' order.
    pub embeddings: Vec<Vec<f32>>,
    /// Every class ranked, in the pictures' order; empty unless asked for.
    pub rankings: Vec<Ranking>,
}

/// Runs the model on pictures: their embeddings, and their rankings when the flag is set.
pub type ModelFn = Box<dyn FnMut(&[RgbImage], bool) -> Result<Output> + Send>;

/// One request's pictures waiting for the model.
struct Job {
    pictures: Vec<RgbImage>,
    /// How many pictures it brought (they are taken out for the model call).
    len: usize,
    rank: bool,
    reply: oneshot::Sender<Result<Output, String>>,
}

/// Counters shown by `/healthz`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Photos (uploads) answered or in flight.
    pub photos: AtomicU64,
    /// Pictures (photos or regions) run through the model.
    pub pictures: AtomicU64,
    /// Model calls made.
    pub model_calls: AtomicU64,
}

/// State shared by the request handlers and the model thread.
struct Shared {
    /// Photos admitted and not yet answered.
    admitted: AtomicUsize,
    /// Photos admitted whose pictures have not reached the model's queue yet (their bodies
    /// are being read, or they are being decoded): a call waits a little for them.
    coming: AtomicUsize,
    max_queue: usize,
    counters: Counters,
}

/// The queue in front of the model thread.
pub struct Batcher {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

/// A place in the queue for some photos, given back when dropped (answered, failed, or the
/// client went away).
pub struct Ticket {
    shared: Arc<Shared>,
    photos: usize,
    /// Its pictures reached the model's queue.
    arrived: bool,
}

impl Ticket {
    /// Its photos are no longer on their way to the queue.
    fn arrive(&mut self) {
        if !std::mem::replace(&mut self.arrived, true) {
            self.shared.coming.fetch_sub(self.photos, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.arrive();
        self.shared
            .admitted
            .fetch_sub(self.photos, Ordering::SeqCst);
    }
}

impl Batcher {
    /// Starts the model thread. A batch holds up to `batch_size` pictures (a request with more
    /// is run in parts of that size); when the thread takes a batch while admitted photos are
    /// still on their way (read or decoded), it waits up to `wait` for them. At most
    /// `max_queue` photos are admitted.
    pub fn start(model: ModelFn, batch_size: usize, wait: Duration, max_queue: usize) -> Self {
        let shared = Arc::new(Shared {
            admitted: AtomicUsize::new(0),
            coming: AtomicUsize::new(0),
            max_queue: max_queue.max(1),
            counters: Counters::default(),
        });
        let (jobs, rx) = channel();
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("foodclip-model".into())
            .spawn(move || model_loop(model, rx, &for_thread, batch_size.max(1), wait))
            .expect("a thread for the model");
        Self { jobs, shared }
    }

    /// A place for `photos` more photos, or `None` when the queue is full.
    pub fn admit(&self, photos: usize) -> Option<Ticket> {
        let s = &self.shared;
        let mut now = s.admitted.load(Ordering::SeqCst);
        loop {
            if now + photos > s.max_queue {
                return None;
            }
            match s
                .admitted
                .compare_exchange(now, now + photos, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        s.coming.fetch_add(photos, Ordering::SeqCst);
        s.counters
            .photos
            .fetch_add(photos as u64, Ordering::Relaxed);
        Some(Ticket {
            shared: s.clone(),
            photos,
            arrived: false,
        })
    }

    /// Runs `pictures`, those of the photos `tickets` admitted, through the model with
    /// whatever else is waiting; `rank` asks for rankings. An `Err` is the model's failure (or
    /// panic): the request's 500.
    pub async fn run(
        &self,
        pictures: Vec<RgbImage>,
        rank: bool,
        tickets: &mut [Ticket],
    ) -> Result<Output, String> {
        let job = (!pictures.is_empty()).then(|| {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                len: pictures.len(),
                pictures,
                rank,
                reply,
            };
            (job, answer)
        });
        let sent = job.map(|(job, answer)| self.jobs.send(job).map(|()| answer));
        tickets.iter_mut().for_each(Ticket::arrive);
        let stopped = || "the model thread has stopped".to_string();
        match sent {
            None => Ok(Output::default()),
            Some(Err(_)) => Err(stopped()),
            Some(Ok(answer)) => answer.await.map_err(|_| stopped())?,
        }
    }

    /// Photos admitted and not yet answered.
    pub fn waiting(&self) -> usize {
        self.shared.admitted.load(Ordering::SeqCst)
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }
}

/// The model thread: takes every job waiting (up to `batch_size` pictures, waiting up to
/// `wait` while admitted photos are still on their way), runs them in one call, and answers
/// each job.
fn model_loop(
    mut model: ModelFn,
    rx: Receiver<Job>,
    shared: &Shared,
    batch_size: usize,
    wait: Duration,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut count = jobs[0].len;
        let deadline = Instant::now() + wait;
        while count < batch_size {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(_) if shared.coming.load(Ordering::SeqCst) == 0 => None,
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    rx.recv_timeout(left).ok()
                }
            };
            let Some(job) = next else { break };
            count += job.len;
            jobs.push(job);
        }
        let rank = jobs.iter().any(|j| j.rank);
        let pictures: Vec<RgbImage> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.pictures))
            .collect();
        let calls = pictures.len().div_ceil(batch_size) as u64;
        let c = &shared.counters;
        c.model_calls.fetch_add(calls, Ordering::Relaxed);
        c.pictures
            .fetch_add(pictures.len() as u64, Ordering::Relaxed);
        let result = run_parts(&mut model, &pictures, rank, batch_size);
        answer(jobs, result);
    }
}

/// Runs `pictures` through `model` `batch_size` at a time; a panic is an error.
fn run_parts(
    model: &mut ModelFn,
    pictures: &[RgbImage],
    rank: bool,
    batch_size: usize,
) -> Result<Output, String> {
    let run = std::panic::AssertUnwindSafe(|| -> Result<Output> {
        let mut all = Output::default();
        for part in pictures.chunks(batch_size) {
            let out = model(part, rank)?;
            all.embeddings.extend(out.embeddings);
            all.rankings.extend(out.rankings);
        }
        Ok(all)
    });
    match std::panic::catch_unwind(run) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("the model failed: {e:#}")),
        Err(_) => Err("the model failed: internal error (a panic)".to_string()),
    }
}

/// Hands each job its rows of `result`, in the jobs' order.
fn answer(jobs: Vec<Job>, result: Result<Output, String>) {
    match result {
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Ok(out) => {
            let mut embeddings = out.embeddings.into_iter();
            let mut rankings = out.rankings.into_iter();
            for job in jobs {
                let n = job.len;
                let mine = Output {
                    embeddings: embeddings.by_ref().take(n).collect(),
                    rankings: if job.rank {
                        rankings.by_ref().take(n).collect()
                    } else {
                        rankings.by_ref().take(n).for_each(drop);
                        Vec::new()
                    },
                };
                let _ = job.reply.send(Ok(mine));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A model that records each call's size, embeds a picture as its first pixel's red value,
    /// and panics on a picture whose red value is 255.
    fn fake(calls: Arc<Mutex<Vec<usize>>>) -> ModelFn {
        Box::new(move |pictures, rank| {
            calls.lock().unwrap().push(pictures.len());
            let embeddings: Vec<Vec<f32>> = pictures
                .iter()
                .map(|p| {
                    let red = p.get_pixel(0, 0).0[0];
                    assert!(red != 255, "a model bug");
                    vec![red as f32]
                })
                .collect();
            let rankings = if rank {
                let none = Ranking {
                    predictions: Vec::new(),
                    groups: Vec::new(),
                    decision: None,
                };
                vec![none; pictures.len()]
            } else {
                Vec::new()
            };
            Ok(Output {
                embeddings,
                rankings,
            })
        })
    }

    fn picture(red: u8) -> RgbImage {
        RgbImage::from_pixel(2, 2, image::Rgb([red, 0, 0]))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn requests_waiting_together_share_a_call_and_get_their_own_rows() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::start(
            fake(calls.clone()),
            8,
            Duration::from_millis(500),
            100,
        ));
        // Three requests admitted: the first to arrive waits for the two on their way.
        let tickets: Vec<Ticket> = (0..3).map(|_| batcher.admit(1).unwrap()).collect();
        let answers = runtime().block_on(async {
            let tasks: Vec<_> = tickets
                .into_iter()
                .zip(0..3u8)
                .map(|(ticket, i)| {
                    let b = batcher.clone();
                    tokio::spawn(async move {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let pictures = vec![picture(i * 10), picture(i * 10 + 1)];
                        b.run(pictures, i != 1, &mut [ticket]).await
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap().unwrap());
            }
            out
        });
        assert_eq!(
            *calls.lock().unwrap(),
            [6],
            "one call for the three requests"
        );
        for (i, a) in answers.iter().enumerate() {
            let want = [vec![i as f32 * 10.0], vec![i as f32 * 10.0 + 1.0]];
            assert_eq!(a.embeddings, want);
            assert_eq!(a.rankings.len(), if i == 1 { 0 } else { 2 });
        }
        let c = batcher.counters();
        assert_eq!(c.model_calls.load(Ordering::Relaxed), 1);
        assert_eq!(c.pictures.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_lone_request_runs_at_once_in_parts_of_the_batch_size() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::start(fake(calls.clone()), 4, Duration::from_secs(60), 100);
        let start = Instant::now();
        let pictures: Vec<RgbImage> = (0..10).map(picture).collect();
        let mut ticket = batcher.admit(1).unwrap();
        let out = runtime()
            .block_on(batcher.run(pictures, false, std::slice::from_mut(&mut ticket)))
            .unwrap();
        // Nothing else was on its way: no waiting for the 60 s window.
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(*calls.lock().unwrap(), [4, 4, 2]);
        let reds: Vec<f32> = out.embeddings.iter().map(|e| e[0]).collect();
        assert_eq!(reds, (0..10).map(|r| r as f32).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_in_the_model_fails_its_call_only() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::start(fake(calls), 8, Duration::ZERO, 100);
        let rt = runtime();
        let err = rt
            .block_on(batcher.run(vec![picture(255)], true, &mut []))
            .unwrap_err();
        assert!(err.contains("internal error"), "{err}");
        let ok = rt
            .block_on(batcher.run(vec![picture(3)], true, &mut []))
            .unwrap();
        assert_eq!(ok.embeddings, [vec![3.0]]);
    }

    #[test]
    fn admission_is_bounded_and_given_back() {
        let batcher = Batcher::start(fake(Arc::default()), 8, Duration::ZERO, 3);
        let two = batcher.admit(2).unwrap();
        let one = batcher.admit(1).unwrap();
        assert!(batcher.admit(1).is_none());
        assert_eq!(batcher.waiting(), 3);
        drop(two);
        assert!(batcher.admit(2).is_some());
        drop(one);
        assert_eq!(batcher.waiting(), 0);
        assert_eq!(batcher.counters().photos.load(Ordering::Relaxed), 5);
    }
}
