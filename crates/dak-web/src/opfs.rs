//! `OpfsJournal`: the profile's journal (`dak_core::journal`) in a file of
//! the browser's Origin Private File System, written through a
//! synchronous access handle, so a commit is on disk (`flush`) before the
//! core goes on. Synchronous access handles exist only in dedicated
//! workers: the engine runs in one (`web/worker.js`).
//!
//! Invariants:
//! - **One owner.** A synchronous access handle locks its file: a second
//!   tab cannot open the profile (`OpenError::InUse`), so two tabs never
//!   write one journal. Both files stay locked while the tab lives.
//! - **Two files, one in use.** Compaction writes a snapshot of the
//!   profile to the other file, flushes it, and only then appends there;
//!   opening takes the complete file of the higher generation
//!   (`journal::inspect`), so a crash mid-compaction loses nothing.
//! - **Appends only, at the end.** After replay the file is cut to its
//!   last whole frame (a torn write is dropped, `Replayed::dropped_bytes`);
//!   each append writes at the end and flushes, or cuts the file back to
//!   where it was and fails the commit.
//! - The whole file is read into memory to be replayed: until the journal
//!   is compacted, a profile's open costs its whole history.

use std::cell::Cell;

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetFileOptions,
    FileSystemReadWriteOptions, FileSystemSyncAccessHandle, WorkerGlobalScope,
};

use dak_core::ClientError;
use dak_core::journal::{Inspected, JournalSink, inspect};

use crate::socket::js_text;

/// The profile's two journal files in the origin's private file system:
/// one in use, the other where the next compaction writes.
pub const JOURNAL_FILES: [&str; 2] = ["dak-profile.a.journal", "dak-profile.b.journal"];

#[derive(Debug)]
pub enum OpenError {
    /// Not in a dedicated worker, or no OPFS here (an old browser, or a
    /// private window that has none).
    Unsupported(String),
    /// Another tab (its worker) holds the files.
    InUse,
    Failed(String),
}

pub struct OpfsJournal {
    /// Both files' handles, held (and so locked) for the tab's life.
    slots: [FileSystemSyncAccessHandle; 2],
    /// The file appends go to.
    active: Cell<usize>,
    /// Its length.
    size: Cell<f64>,
    /// A compaction failed in a way that makes writing unsafe
    /// (`CompactError::Unsafe`): every append is refused until the tab
    /// opens the profile again.
    broken: Cell<bool>,
}

// SAFETY: wasm32-unknown-unknown without the `atomics` target feature (how
// dak-web is built) has no threads: nothing can be sent to or shared with
// another thread, so `Send`/`Sync` promise nothing that could break. The
// core's `ProfileStore` needs them because natively it does run on threads.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Send for OpfsJournal {}
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for OpfsJournal {}

/// Why a compaction did not happen.
#[derive(Debug)]
pub enum CompactError {
    /// Nothing changed: the old file is still the one in use.
    NotDone(ClientError),
    /// The other file could not be emptied again after a failed write.
    Unsafe(ClientError),
}

/// What opening found: the journal to replay, and what it is.
pub struct Opened {
    pub journal: OpfsJournal,
    pub bytes: Vec<u8>,
    pub inspected: Inspected,
}

impl OpfsJournal {
    /// Opens (or creates) both files, reads both, and picks the complete
    /// one of the highest generation (`journal::inspect`): after a crash
    /// in the middle of a compaction, the older, whole one.
    pub async fn open() -> Result<Opened, OpenError> {
        let scope = js_sys::global()
            .dyn_into::<WorkerGlobalScope>()
            .map_err(|_| OpenError::Unsupported("not running in a worker".into()))?;
        let root = JsFuture::from(scope.navigator().storage().get_directory())
            .await
            .map_err(|e| OpenError::Unsupported(js_text(&e)))?
            .unchecked_into::<FileSystemDirectoryHandle>();
        let a = open_handle(&root, JOURNAL_FILES[0]).await?;
        let b = match open_handle(&root, JOURNAL_FILES[1]).await {
            Ok(b) => b,
            Err(e) => {
                a.close();
                return Err(e);
            }
        };
        // From here both handles are closed on every way out (`Drop`).
        let journal = OpfsJournal {
            slots: [a, b],
            active: Cell::new(0),
            size: Cell::new(0.0),
            broken: Cell::new(false),
        };
        let contents = [journal.read(0)?, journal.read(1)?];
        let found = [inspect(&contents[0]), inspect(&contents[1])];
        let chosen = (0..2)
            .filter(|&i| found[i].complete)
            .max_by_key(|&i| (found[i].generation, found[i].valid_bytes))
            .ok_or_else(|| {
                OpenError::Failed("both of the profile's journal files are damaged".into())
            })?;
        let [first, second] = contents;
        let bytes = if chosen == 0 { first } else { second };
        journal.active.set(chosen);
        journal.size.set(bytes.len() as f64);
        Ok(Opened {
            journal,
            bytes,
            inspected: found[chosen],
        })
    }

    fn read(&self, slot: usize) -> Result<Vec<u8>, OpenError> {
        let handle = &self.slots[slot];
        let size = handle
            .get_size()
            .map_err(|e| OpenError::Failed(js_text(&e)))?;
        let mut bytes = vec![0u8; size as usize];
        let at = FileSystemReadWriteOptions::new();
        at.set_at(0.0);
        let read = handle
            .read_with_u8_array_and_options(&mut bytes, &at)
            .map_err(|e| OpenError::Failed(js_text(&e)))?;
        bytes.truncate(read as usize);
        Ok(bytes)
    }

    fn handle(&self) -> &FileSystemSyncAccessHandle {
        &self.slots[self.active.get()]
    }

    /// Cuts the file in use to `len` bytes (its whole frames, after replay).
    pub fn truncate(&self, len: usize) -> Result<(), ClientError> {
        self.handle()
            .truncate_with_f64(len as f64)
            .and_then(|()| self.handle().flush())
            .map_err(|e| store_error(&e))?;
        self.size.set(len as f64);
        Ok(())
    }

    /// Writes a snapshot (`journal::snapshot`'s frames) to the other file,
    /// flushes it, and makes it the file in use; then empties the old one.
    /// On failure the old file stays in use, untouched, and the other file
    /// is emptied again: `CompactError::Unsafe` when even that could not be
    /// confirmed (a whole snapshot of a higher generation might survive and
    /// win over what the old file gets next), and then nothing must be
    /// written until the tab opens again.
    pub fn compact(&self, frames: &[Vec<u8>]) -> Result<(), CompactError> {
        let next = 1 - self.active.get();
        let handle = &self.slots[next];
        let mut at = 0.0;
        let written = (|| {
            // Emptied and flushed first: nothing of what it held before can
            // follow the snapshot.
            handle.truncate_with_f64(0.0)?;
            handle.flush()?;
            for frame in frames {
                let options = FileSystemReadWriteOptions::new();
                options.set_at(at);
                let n = handle.write_with_u8_array_and_options(frame, &options)?;
                if n as usize != frame.len() {
                    return Err(wasm_bindgen::JsValue::from_str(
                        "the browser's storage is full",
                    ));
                }
                at += n;
            }
            handle.flush()
        })();
        if let Err(e) = written {
            return Err(
                match handle.truncate_with_f64(0.0).and_then(|()| handle.flush()) {
                    Ok(()) => CompactError::NotDone(store_error(&e)),
                    Err(_) => CompactError::Unsafe(store_error(&e)),
                },
            );
        }
        let old = self.active.replace(next);
        self.size.set(at);
        // The new file is whole and of a higher generation: the old one is
        // no longer read; empty it to give the space back.
        let _ = self.slots[old]
            .truncate_with_f64(0.0)
            .and_then(|()| self.slots[old].flush());
        Ok(())
    }
}

async fn open_handle(
    root: &FileSystemDirectoryHandle,
    name: &str,
) -> Result<FileSystemSyncAccessHandle, OpenError> {
    let options = FileSystemGetFileOptions::new();
    options.set_create(true);
    let file = JsFuture::from(root.get_file_handle_with_options(name, &options))
        .await
        .map_err(|e| OpenError::Failed(js_text(&e)))?
        .unchecked_into::<FileSystemFileHandle>();
    let handle = JsFuture::from(file.create_sync_access_handle())
        .await
        .map_err(|e| {
            let name = js_sys::Reflect::get(&e, &"name".into())
                .ok()
                .and_then(|n| n.as_string())
                .unwrap_or_default();
            if name == "NoModificationAllowedError" || name == "InvalidStateError" {
                OpenError::InUse
            } else {
                OpenError::Failed(js_text(&e))
            }
        })?
        .unchecked_into::<FileSystemSyncAccessHandle>();
    Ok(handle)
}

impl JournalSink for OpfsJournal {
    fn append(&self, frame: &[u8]) -> Result<(), ClientError> {
        if self.broken.get() {
            return Err(ClientError::Store {
                path: JOURNAL_FILES[0].into(),
                message: "this browser's storage failed while tidying the profile; reload the page"
                    .into(),
            });
        }
        let at = FileSystemReadWriteOptions::new();
        at.set_at(self.size.get());
        let written = self.handle().write_with_u8_array_and_options(frame, &at);
        let result = match written {
            Ok(n) if n as usize == frame.len() => {
                self.handle().flush().map_err(|e| store_error(&e))
            }
            Ok(_) => Err(ClientError::Store {
                path: JOURNAL_FILES[0].into(),
                message: "the browser's storage is full".into(),
            }),
            Err(e) => Err(store_error(&e)),
        };
        match result {
            Ok(()) => {
                self.size.set(self.size.get() + frame.len() as f64);
                Ok(())
            }
            Err(e) => {
                // The commit fails: cut off whatever part of the frame
                // reached the file, so a later replay cannot apply a commit
                // the core was told did not happen.
                if let Err(cut) = self
                    .handle()
                    .truncate_with_f64(self.size.get())
                    .and_then(|()| self.handle().flush())
                {
                    return Err(ClientError::Store {
                        path: JOURNAL_FILES[0].into(),
                        message: format!(
                            "{e}; and the journal could not be cut back: {}",
                            js_text(&cut)
                        ),
                    });
                }
                Err(e)
            }
        }
    }

    /// `compact`: not done is `false` (logged); unsafe is an error, after
    /// which appends are refused.
    fn replace(&self, frames: &[Vec<u8>]) -> Result<bool, ClientError> {
        if self.broken.get() {
            return Ok(false);
        }
        match self.compact(frames) {
            Ok(()) => Ok(true),
            Err(CompactError::NotDone(e)) => {
                tracing::warn!(error = %e, "the journal was not compacted");
                Ok(false)
            }
            Err(CompactError::Unsafe(e)) => {
                self.broken.set(true);
                Err(e)
            }
        }
    }
}

impl Drop for OpfsJournal {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.close();
        }
    }
}

fn store_error(e: &wasm_bindgen::JsValue) -> ClientError {
    ClientError::Store {
        path: JOURNAL_FILES[0].into(),
        message: js_text(e),
    }
}
