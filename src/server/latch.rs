//! A one-way flag that tasks on one executor can await (shutdown).

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default, Clone)]
pub struct Latch {
    inner: Rc<RefCell<(bool, Vec<Waker>)>>,
}

impl Latch {
    pub fn set(&self) {
        let mut i = self.inner.borrow_mut();
        i.0 = true;
        for w in i.1.drain(..) {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.inner.borrow().0
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if i.0 {
                return Poll::Ready(());
            }
            if !i.1.iter().any(|w| w.will_wake(cx.waker())) {
                i.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
