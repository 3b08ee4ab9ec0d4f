//! Numbers and addresses as a line writes them, byte by byte (the formatting machinery costs
//! several times as much): decimals, milliseconds to the microsecond, `ip:port`, and an
//! address's text kept from one line to the next.

use std::{net::SocketAddr, time::Duration};

/// The longest `ip:port` written: `[`, an IPv6 address (45 bytes at most, IPv4-mapped), `%`
/// and a scope id (10), `]:` and a port (5).
const MAX_ADDR: usize = 1 + 45 + 1 + 10 + 2 + 5;

/// `ip:port` as text.
#[derive(Clone, Copy)]
pub(super) struct AddrText([u8; MAX_ADDR], u8);

impl AddrText {
    fn bytes(&self) -> &[u8] {
        &self.0[..usize::from(self.1)]
    }

    /// Writes `a` to `out`: `last`'s text when it is `a`'s; else written as usual, and what
    /// was written kept in `last` for the next line.
    pub(super) fn write(
        last: &mut Option<(SocketAddr, AddrText)>,
        a: SocketAddr,
        out: &mut Vec<u8>,
    ) {
        if let Some((at, text)) = last
            && *at == a
        {
            out.extend_from_slice(text.bytes());
            return;
        }
        let from = out.len();
        addr(a, out);
        let written = &out[from..];
        // Never longer; were it, the kept text is cut rather than the line lost.
        let len = written.len().min(MAX_ADDR);
        let mut text = AddrText([0; MAX_ADDR], len as u8);
        text.0[..len].copy_from_slice(&written[..len]);
        *last = Some((a, text));
    }
}

/// Two decimal digits for each of 0-99.
pub(super) const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// `n` in decimal. Most numbers in a line (octets, statuses, attempts, small sizes) have at
/// most three digits: pushed one by one, inline; longer ones two digits at a time.
#[inline]
pub(super) fn number(mut n: u64, out: &mut Vec<u8>) {
    if n < 10 {
        out.push(b'0' + n as u8);
    } else if n < 1000 {
        if n >= 100 {
            out.push(b'0' + (n / 100) as u8);
            n %= 100;
        }
        let p = n as usize * 2;
        out.push(PAIRS[p]);
        out.push(PAIRS[p + 1]);
    } else {
        long_number(n, out);
    }
}

#[inline(never)]
fn long_number(mut n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let p = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
    }
    if n >= 10 {
        let p = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

/// `n` in exactly `width` decimal digits (it has no more).
pub(super) fn digits(mut n: u64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (start..start + width).rev() {
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Milliseconds, to the microsecond: `1.204`.
pub(super) fn millis(d: Duration, out: &mut Vec<u8>) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    number(us / 1000, out);
    out.push(b'.');
    let frac = (us % 1000) as usize;
    out.push(b'0' + (frac / 100) as u8);
    out.push(PAIRS[frac % 100 * 2]);
    out.push(PAIRS[frac % 100 * 2 + 1]);
}

/// `ip:port`, `[ip6]:port`.
pub(super) fn addr(a: SocketAddr, out: &mut Vec<u8>) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(u64::from(o), out);
            }
            out.push(b':');
            number(u64::from(a.port()), out);
        }
        SocketAddr::V6(_) => {
            use std::io::Write;
            let _ = write!(out, "{a}");
        }
    }
}
