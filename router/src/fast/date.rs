//! The `Date` header of router-made answers: IMF-fixdate text formatted at most once a second per
//! worker thread (as hyper does), so an answer costs one clock read and a copy.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
type DateText = [u8; 29];

thread_local! {
    static CACHED: Cell<(u64, DateText)> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// Appends `date: <now>\r\n` to `out`.
pub(super) fn put_header(out: &mut Vec<u8>) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let text = format(secs);
        c.set((secs, text));
        text
    });
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&text);
    out.extend_from_slice(b"\r\n");
}

/// Formats seconds since the Unix epoch as an IMF-fixdate (RFC 9110, section 5.6.7).
fn format(secs: u64) -> DateText {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, in eras of 400 years).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut t = [0u8; 29];
    let two = |t: &mut DateText, at: usize, v: u64| {
        t[at] = b'0' + (v / 10 % 10) as u8;
        t[at + 1] = b'0' + (v % 10) as u8;
    };
    // 1970-01-01 was a Thursday.
    t[..3].copy_from_slice(DAYS[((days + 4) % 7) as usize]);
    t[3..5].copy_from_slice(b", ");
    two(&mut t, 5, day);
    t[7] = b' ';
    t[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    t[11] = b' ';
    two(&mut t, 12, year / 100);
    two(&mut t, 14, year);
    t[16] = b' ';
    two(&mut t, 17, rem / 3600);
    t[19] = b':';
    two(&mut t, 20, rem / 60 % 60);
    t[22] = b':';
    two(&mut t, 23, rem % 60);
    t[25..].copy_from_slice(b" GMT");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_imf_fixdate() {
        for (secs, want) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
        ] {
            assert_eq!(std::str::from_utf8(&format(secs)).unwrap(), want);
        }
        let mut out = Vec::new();
        put_header(&mut out);
        put_header(&mut out);
        assert_eq!(out.len(), 2 * (6 + 29 + 2));
    }
}
