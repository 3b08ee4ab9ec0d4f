//! The writer thread: formats each line straight into the buffer it writes, writes the buffer
//! when it is nearly full and once the queue is empty, flushes, and rests [`REST`] before
//! looking again.

use std::{
    io::{self, Write},
    sync::mpsc::Receiver,
    time::Duration,
};

use super::{Format, Msg, format::Formatter};

/// How long the writer rests after writing what was queued: lines are written in batches (at
/// 10,000 requests a second, 200 lines a write), and a request seldom has to wake it. The
/// queue must hold what comes meanwhile: its default, 4,096 lines, is 20 ms of 200,000
/// requests a second.
pub(super) const REST: Duration = Duration::from_millis(20);

/// The buffer is written once it holds this much.
const FULL: usize = 56 * 1024;

pub(super) fn write_lines(rx: Receiver<Msg>, mut out: Box<dyn Write + Send>, format: Format) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut formatter = Formatter::default();
    // Whether the last write failed: warned once per outage.
    let mut failed = false;
    let mut write = |buf: &mut Vec<u8>, out: &mut Box<dyn Write + Send>, flush: bool| {
        if buf.is_empty() && !flush {
            return;
        }
        let wrote = !buf.is_empty();
        let done = write_out(buf, out).and_then(|()| if flush { out.flush() } else { Ok(()) });
        match done {
            Err(err) if !failed => {
                failed = true;
                tracing::warn!(error = %err, "access log write failed; lines are being lost");
            }
            Err(_) => {}
            // Only lines written and flushed say the outage is over.
            Ok(()) if wrote && flush => failed = false,
            Ok(()) => {}
        }
    };
    while let Ok(mut msg) = rx.recv() {
        loop {
            match msg {
                Msg::Line(e) => {
                    formatter.line(&e, format, &mut buf);
                    if buf.len() >= FULL {
                        write(&mut buf, &mut out, false);
                    }
                }
                Msg::Flush(done) => {
                    write(&mut buf, &mut out, true);
                    let _ = done.send(());
                }
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        write(&mut buf, &mut out, true);
        std::thread::sleep(REST);
    }
    write(&mut buf, &mut out, true);
}

/// Writes `buf` to `out`, taking out what was written. When a write fails, what was not
/// written stays for the next try (so a line cut short is finished, never glued to the next),
/// up to [`FULL`]: past that, whole lines at its end are given up.
fn write_out(buf: &mut Vec<u8>, out: &mut dyn Write) -> io::Result<()> {
    let mut done = 0;
    let res = loop {
        if done == buf.len() {
            break Ok(());
        }
        match out.write(&buf[done..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    buf.drain(..done);
    if res.is_err() && buf.len() > FULL {
        // The first line is kept whole whatever its length (a line is at most about 4 KiB).
        let first = buf
            .iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |i| i + 1);
        let keep = buf[..FULL]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(first, |i| (i + 1).max(first));
        buf.truncate(keep);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `take` bytes, then fails `fails` times, then takes everything.
    struct Flaky {
        got: Vec<u8>,
        take: usize,
        fails: usize,
    }

    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.take > 0 {
                let n = b.len().min(self.take);
                self.take -= n;
                self.got.extend_from_slice(&b[..n]);
                return Ok(n);
            }
            if self.fails > 0 {
                self.fails -= 1;
                return Err(io::Error::other("disk full"));
            }
            self.got.extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_short_by_a_failed_write_is_finished_by_the_next() {
        let mut out = Flaky {
            got: Vec::new(),
            take: 5,
            fails: 1,
        };
        let mut buf = b"first line\nsecond\n".to_vec();
        assert!(write_out(&mut buf, &mut out).is_err());
        assert_eq!(buf, b" line\nsecond\n", "what was not written stays");
        buf.extend_from_slice(b"third\n");
        write_out(&mut buf, &mut out).unwrap();
        assert_eq!(out.got, b"first line\nsecond\nthird\n");
        assert!(buf.is_empty());
    }

    #[test]
    fn what_waits_through_an_outage_is_bounded_in_whole_lines() {
        let mut out = Flaky {
            got: Vec::new(),
            take: 3,
            fails: usize::MAX,
        };
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let mut buf = Vec::new();
        for _ in 0..2000 {
            buf.extend_from_slice(&line);
            let _ = write_out(&mut buf, &mut out);
        }
        assert!(buf.len() <= FULL, "{}", buf.len());
        assert_eq!(buf.len() % 100, 97, "the cut line's rest, then whole lines");
        assert_eq!(*buf.last().unwrap(), b'\n');
    }
}
