//! Where examples/smtp_server.rs keeps mail: a maildir (`tmp/`, `new/`, `cur/`). A message
//! is written to `tmp/ID` as it arrives, synced, and renamed to `new/ID` once whole, so a
//! reader of `new/` never sees half a message. These are blocking calls: they run on the
//! framework's workers, never on a reactor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A maildir's root.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    /// Opens the maildir at `root`, creating it and its `tmp/`, `new/` and `cur/` if missing.
    pub fn create(root: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Maildir { root: root.into() })
    }

    /// Starts message `id` in `tmp/`, beginning with `header`.
    pub fn begin(&self, id: String, header: &[u8]) -> io::Result<Incoming> {
        let tmp = self.root.join("tmp").join(&id);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let written = file.write_all(header);
        let incoming = Incoming {
            new: self.root.join("new").join(&id),
            id,
            tmp,
            file,
            failed: None,
        };
        match written {
            Ok(()) => Ok(incoming),
            Err(e) => {
                incoming.discard();
                Err(e)
            }
        }
    }
}

/// A message being received into `tmp/`.
#[derive(Debug)]
pub struct Incoming {
    id: String,
    tmp: PathBuf,
    new: PathBuf,
    file: File,
    /// The first write that failed: the message is then refused at its end.
    failed: Option<io::Error>,
}

impl Incoming {
    /// Appends `bytes`; a failure is remembered for [`commit`](Incoming::commit).
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.file.write_all(bytes) {
                self.failed = Some(e);
            }
        }
    }

    /// Syncs the message and moves it to `new/`; returns its id.
    pub fn commit(mut self) -> io::Result<String> {
        let done = match self.failed.take() {
            Some(e) => Err(e),
            None => self
                .file
                .sync_all()
                .and_then(|()| fs::rename(&self.tmp, &self.new)),
        };
        match done {
            Ok(()) => Ok(self.id),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Drops the message: its file in `tmp/` is removed.
    pub fn discard(self) {
        drop(self.file);
        if let Err(e) = fs::remove_file(&self.tmp) {
            log::warn!("removing {}: {e}", self.tmp.display());
        }
    }
}

/// A message id unique to this maildir: the time, the process, the connection and the
/// message's number on it.
pub fn message_id(connection: u64, number: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:06}P{}C{connection}M{number}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// `now` as an RFC 5322 date in UTC, e.g. `Tue, 26 Nov 2024 10:37:00 +0000`.
pub fn rfc5322_date(now: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, from 0000-03-01).
    let z = days + 719_468;
    let (era, day_of_era) = (z / 146_097, z % 146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_based + 2) / 5 + 1;
    let month = if march_based < 10 {
        march_based + 3
    } else {
        march_based - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day} {} {year} {hour:02}:{minute:02}:{second:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}
