//! `OpfsJournal`: the profile's journal (`dak_core::journal`) in a file of
//! the browser's Origin Private File System, written through a
//! synchronous access handle, so a commit is on disk (`flush`) before the
//! core goes on. Synchronous access handles exist only in dedicated
//! workers: the engine runs in one (`web/worker.js`).
//!
//! Invariants:
//! - **One owner.** A synchronous access handle locks its file: a second
//!   tab cannot open the profile (`OpenError::InUse`), so two tabs never
//!   write one journal.
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
use dak_core::journal::JournalSink;

use crate::socket::js_text;

/// The profile's file in the origin's private file system.
pub const JOURNAL_FILE: &str = "dak-profile.journal";

#[derive(Debug)]
pub enum OpenError {
    /// Not in a dedicated worker, or no OPFS here (an old browser, or a
    /// private window that has none).
    Unsupported(String),
    /// Another tab (its worker) holds the file.
    InUse,
    Failed(String),
}

pub struct OpfsJournal {
    handle: FileSystemSyncAccessHandle,
    size: Cell<f64>,
}

// SAFETY: wasm32-unknown-unknown without the `atomics` target feature (how
// dak-web is built) has no threads: nothing can be sent to or shared with
// another thread, so `Send`/`Sync` promise nothing that could break. The
// core's `ProfileStore` needs them because natively it does run on threads.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Send for OpfsJournal {}
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for OpfsJournal {}

impl OpfsJournal {
    /// Opens (or creates) the journal and reads it whole.
    pub async fn open(name: &str) -> Result<(OpfsJournal, Vec<u8>), OpenError> {
        let scope = js_sys::global()
            .dyn_into::<WorkerGlobalScope>()
            .map_err(|_| OpenError::Unsupported("not running in a worker".into()))?;
        let root = JsFuture::from(scope.navigator().storage().get_directory())
            .await
            .map_err(|e| OpenError::Unsupported(js_text(&e)))?
            .unchecked_into::<FileSystemDirectoryHandle>();
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
        // From here the handle is closed on every way out (`Drop`).
        let journal = OpfsJournal {
            handle,
            size: Cell::new(0.0),
        };
        let size = journal
            .handle
            .get_size()
            .map_err(|e| OpenError::Failed(js_text(&e)))?;
        let mut bytes = vec![0u8; size as usize];
        let at = FileSystemReadWriteOptions::new();
        at.set_at(0.0);
        let read = journal
            .handle
            .read_with_u8_array_and_options(&mut bytes, &at)
            .map_err(|e| OpenError::Failed(js_text(&e)))?;
        bytes.truncate(read as usize);
        journal.size.set(read);
        Ok((journal, bytes))
    }

    /// Cuts the file to `len` bytes (its whole frames, after replay).
    pub fn truncate(&self, len: usize) -> Result<(), ClientError> {
        self.handle
            .truncate_with_f64(len as f64)
            .and_then(|()| self.handle.flush())
            .map_err(|e| store_error(&e))?;
        self.size.set(len as f64);
        Ok(())
    }
}

impl JournalSink for OpfsJournal {
    fn append(&self, frame: &[u8]) -> Result<(), ClientError> {
        let at = FileSystemReadWriteOptions::new();
        at.set_at(self.size.get());
        let written = self.handle.write_with_u8_array_and_options(frame, &at);
        let result = match written {
            Ok(n) if n as usize == frame.len() => self.handle.flush().map_err(|e| store_error(&e)),
            Ok(_) => Err(ClientError::Store {
                path: JOURNAL_FILE.into(),
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
                    .handle
                    .truncate_with_f64(self.size.get())
                    .and_then(|()| self.handle.flush())
                {
                    return Err(ClientError::Store {
                        path: JOURNAL_FILE.into(),
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
}

impl Drop for OpfsJournal {
    fn drop(&mut self) {
        self.handle.close();
    }
}

fn store_error(e: &wasm_bindgen::JsValue) -> ClientError {
    ClientError::Store {
        path: JOURNAL_FILE.into(),
        message: js_text(e),
    }
}
