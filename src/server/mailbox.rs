//! A single-consumer queue within one executor whose receiver takes
//! everything queued at once: the unit of batching for socket writes and for
//! cross-shard sends. Not `Send`; lives on one shard.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Inner<T> {
    items: Vec<T>,
    waker: Option<Waker>,
    closed: bool,
}

pub struct Mailbox<T> {
    inner: Rc<RefCell<Inner<T>>>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            inner: Rc::new(RefCell::new(Inner {
                items: Vec::new(),
                waker: None,
                closed: false,
            })),
        }
    }
}

impl<T> Mailbox<T> {
    /// Queues an item; returns false (dropping it) once closed.
    pub fn push(&self, item: T) -> bool {
        let mut i = self.inner.borrow_mut();
        if i.closed {
            return false;
        }
        i.items.push(item);
        if let Some(w) = i.waker.take() {
            w.wake();
        }
        true
    }

    pub fn is_closed(&self) -> bool {
        self.inner.borrow().closed
    }

    /// Takes what is queued now, without waiting (at the end, once closed).
    pub fn take_now(&self) -> Vec<T> {
        std::mem::take(&mut self.inner.borrow_mut().items)
    }

    pub fn close(&self) {
        let mut i = self.inner.borrow_mut();
        i.closed = true;
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    /// Waits for at least one item and takes them all, swapping in `spare`
    /// (an emptied vector from the previous round) to avoid reallocating.
    /// Returns an empty vector when closed and drained.
    pub async fn take_all(&self, mut spare: Vec<T>) -> Vec<T> {
        spare.clear();
        let mut spare = Some(spare);
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if !i.items.is_empty() || i.closed {
                let mut out = spare.take().unwrap_or_default();
                std::mem::swap(&mut out, &mut i.items);
                return Poll::Ready(out);
            }
            i.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_everything_queued_in_one_batch() {
        glommio::LocalExecutor::default().run(async {
            let m = Mailbox::default();
            m.push(1);
            m.push(2);
            assert_eq!(m.take_all(Vec::new()).await, vec![1, 2]);
            m.close();
            assert!(!m.push(3));
            assert!(m.take_all(Vec::new()).await.is_empty());
        });
    }
}
