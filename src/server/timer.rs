//! A timer with the precision of the kernel's clock, for the event loop's deadlines.
//!
//! # Notes
//!
//! `mio::Poll::poll` hands its timeout to `epoll_wait` in whole milliseconds, rounded up, so a
//! 250 µs wait really lasts about 1 ms. Deadlines therefore go to a `timerfd` registered with
//! the poll instead: its expiry makes the poll return, with nanosecond precision. It is armed
//! only when the earliest deadline changes (one `timerfd_settime` per change) and disarmed
//! when there is none, so an idle server sleeps in `epoll_wait` with no timeout at all.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot `timerfd`, registered with the loop's poll.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    /// The deadline the timer is armed for, if any.
    armed: Option<Instant>,
}

impl Timer {
    /// Creates the timer and registers it with `registry` under `token` (edge-triggered, as
    /// every mio source: each expiry is one event).
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a valid descriptor owned by no one else (see above).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Makes the poll return at `at` (or never, for `None`). `now` is the current time.
    pub fn set(&mut self, at: Option<Instant>, now: Instant) -> io::Result<()> {
        if at == self.armed {
            return Ok(());
        }
        // A zero it_value disarms; a deadline already due fires after 1 ns.
        let after = at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(now)
                .max(Duration::from_nanos(1))
        });
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call's duration; the old value is not
        // asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Re-arming also resets the expiry count, so the descriptor never needs reading.
        self.armed = at;
        Ok(())
    }

    /// The timer's event arrived: it is no longer armed.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use mio::{Events, Poll};

    use super::*;

    /// Polls until the timer's event arrives; returns when it did.
    fn wait_for_timer(poll: &mut Poll) -> Instant {
        let mut events = Events::with_capacity(4);
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            if events.iter().any(|e| e.token() == Token(7)) {
                return Instant::now();
            }
            assert!(Instant::now() < give_up, "the timer never fired");
        }
    }

    #[test]
    fn fires_at_a_sub_millisecond_deadline_and_never_before() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new(poll.registry(), Token(7)).unwrap();
        for micros in [300, 50, 900] {
            let now = Instant::now();
            let at = now + Duration::from_micros(micros);
            timer.set(Some(at), now).unwrap();
            let fired = wait_for_timer(&mut poll);
            timer.fired();
            assert!(fired >= at, "fired {:?} early", at - fired);
        }
    }

    /// The point of the timerfd: a wait shorter than a millisecond really is. `epoll_wait`'s
    /// own timeout rounds up to whole milliseconds, so with it no try could fire within 700 µs
    /// of a deadline 300 µs away; on a loaded machine some tries may be late, so one of ten
    /// must be on time.
    #[test]
    fn sub_millisecond_deadlines_are_kept_to_the_microsecond() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new(poll.registry(), Token(7)).unwrap();
        let mut lateness = Vec::new();
        for _ in 0..10 {
            let now = Instant::now();
            let at = now + Duration::from_micros(300);
            timer.set(Some(at), now).unwrap();
            let fired = wait_for_timer(&mut poll);
            timer.fired();
            lateness.push(fired - at);
        }
        assert!(
            lateness
                .iter()
                .any(|late| *late < Duration::from_micros(700)),
            "every wait of 300 µs was late by 700 µs or more: {lateness:?}"
        );
    }

    #[test]
    fn a_new_deadline_replaces_the_old_and_none_disarms() {
        let mut poll = Poll::new().unwrap();
        let mut timer = Timer::new(poll.registry(), Token(7)).unwrap();
        let now = Instant::now();
        timer
            .set(Some(now + Duration::from_secs(3600)), now)
            .unwrap();
        let soon = now + Duration::from_micros(200);
        timer.set(Some(soon), now).unwrap();
        assert!(wait_for_timer(&mut poll) >= soon);
        timer.fired();
        let now = Instant::now();
        timer
            .set(Some(now + Duration::from_millis(5)), now)
            .unwrap();
        timer.set(None, now).unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        assert!(events.is_empty(), "a disarmed timer fired");
    }
}
