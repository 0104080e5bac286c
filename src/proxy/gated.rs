//! A future that is polled again only once it asked to be: its own waker fired.
//!
//! A connection's task is woken for every read and write of every request, and each wake
//! polls everything its `select!` waits on. Beside the connection itself that is the
//! process's stop signal, the abuse signal, the idle timer and the parking wait, and each of
//! those, polled while nothing happened to it, takes its `Notify`'s lock or re-registers its
//! timer's waker. [`gated`] wraps such a future: after its first poll it is polled only when
//! its own waker fired, which is when it can have made progress (a future that returns
//! `Pending` must arrange to be woken). Checking costs one atomic swap and one waker
//! registration. By callgrind that is 845 fewer instructions per HTTP/1.1 request (40,206 to
//! 39,361); HTTP/2, whose connection task is woken once for many requests, is unchanged.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

use atomic_waker::AtomicWaker;

/// `f`, polled only after its first poll or its own wake (see the module's doc).
pub fn gated<F: Future>(f: F) -> Gated<F> {
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Gated {
        waker: Waker::from(flag.clone()),
        flag,
        f,
    }
}

pin_project_lite::pin_project! {
    /// [`gated`]'s future.
    pub struct Gated<F> {
        #[pin]
        f: F,
        flag: Arc<Flag>,
        // The waker `f` sees: it sets `flag` and wakes the task.
        waker: Waker,
    }
}

/// Whether the wrapped future was woken since its last poll, and the task to wake then.
#[derive(Debug)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake between the two is seen by the read,
        // and one after it wakes the task registered here.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        this.f.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready at the poll after `wake` was called on it.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
        fire: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.fire.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A waker counting how often the task was woken.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let fire = Arc::new(AtomicBool::new(false));
        let mut g = Box::pin(gated(Probe {
            polls: polls.clone(),
            waker: inner_waker.clone(),
            fire: fire.clone(),
        }));
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);

        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the first poll reaches it"
        );
        // The task is woken for something else: the inner future is left alone.
        for _ in 0..5 {
            assert!(g.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "unwoken, it is not polled"
        );

        // Its own wake wakes the task and lets the next poll through.
        fire.store(true, Ordering::Relaxed);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "its wake wakes the task");
        assert!(g.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_gated_timer_and_notify_still_fire() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let waiter = tokio::spawn(async move { gated(n.notified()).await });
        tokio::task::yield_now().await;
        notify.notify_waiters();
        notify.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the notified future completes")
            .unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            gated(tokio::time::sleep(std::time::Duration::from_millis(1))),
        )
        .await
        .expect("the timer fires");
    }
}
