//! Moving one object from the source store to the target store: streamed through this process
//! (there is no server-side copy between two stores), hashed on the way, in one PUT or, above a
//! threshold, as a multipart upload; retried as a whole after a transient failure.

use super::super::error::{EngineError, Fault};
use super::super::{Database, PinnedObject};
use super::CopyOptions;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// One object to move.
#[derive(Clone, Debug)]
pub(super) struct ObjectMove {
    pub from: Path,
    pub to: Path,
    pub size: u64,
}

/// What a transfer needs, owned, so that each object runs as a task of its own.
#[derive(Clone)]
pub(super) struct Mover {
    pub source: Database,
    pub target: Database,
    pub multipart_threshold: u64,
    pub part_size: usize,
    pub retry: super::super::RetryPolicy,
    /// MiB of object content held in memory at once, across all transfers.
    pub memory: Arc<Semaphore>,
    pub memory_mib: u32,
    /// Objects transferred (and read back) at once.
    pub parallelism: usize,
}

impl Mover {
    pub fn new(source: &Database, target: &Database, options: &CopyOptions) -> Mover {
        let memory_mib = options.memory_budget_mib.max(1);
        Mover {
            source: source.clone(),
            target: target.clone(),
            multipart_threshold: options.multipart_threshold,
            part_size: options.part_size.max(5 << 20),
            retry: options.retry.clone(),
            memory: Arc::new(Semaphore::new(memory_mib as usize)),
            memory_mib,
            parallelism: options.parallelism.max(1),
        }
    }

    /// Moves the object, retrying transient failures with backoff; returns its sha256.
    pub async fn transfer(&self, object: &ObjectMove) -> Result<[u8; 32], EngineError> {
        let mut attempt = 1;
        loop {
            match self.transfer_once(object).await {
                Err(error)
                    if error.fault() == Fault::Transient && attempt < self.retry.attempts =>
                {
                    let delay = self.retry.backoff.jittered(attempt);
                    tracing::debug!(%error, object = %object.from, attempt, ?delay, "retrying an object transfer");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Reads the object back from the target through the fingerprint code: its sha256, and the
    /// SST blocks whose CRC checked out (a `Corrupt` error when one does not, or it is missing).
    pub async fn read_back(
        &self,
        at_target: &PinnedObject,
    ) -> Result<([u8; 32], u64), EngineError> {
        let mib = ((at_target.size >> 20) + 1).min(u64::from(self.memory_mib)) as u32;
        let _memory = self.memory.acquire_many(mib).await.ok();
        let checked = self
            .target
            .check_content(std::slice::from_ref(at_target), &|_| {})
            .await?;
        let first = checked.first().ok_or_else(|| EngineError::Corrupt {
            object: at_target.path.to_string(),
            detail: "not read back".into(),
        })?;
        Ok((first.sha256, first.blocks))
    }

    async fn transfer_once(&self, object: &ObjectMove) -> Result<[u8; 32], EngineError> {
        let multipart = object.size >= self.multipart_threshold;
        let needed_mib = if multipart {
            (self.part_size >> 20) * (PARTS_IN_FLIGHT + 1)
        } else {
            (object.size >> 20) as usize + 1
        };
        let mib = needed_mib.min(self.memory_mib as usize) as u32;
        // The semaphore is never closed, so acquiring only waits.
        let _memory = self.memory.acquire_many(mib).await.ok();
        let opened = self
            .source
            .bounded_store(
                "open source object",
                self.source.store.main.get(&object.from),
            )
            .await?;
        let mut stream = opened.into_stream();
        let mut sink = if multipart {
            let upload = self
                .target
                .bounded_store(
                    "start multipart upload",
                    self.target.store.main.put_multipart(&object.to),
                )
                .await?;
            Sink::Parts(WriteMultipart::new_with_chunk_size(upload, self.part_size))
        } else {
            Sink::Whole(Vec::new())
        };
        let part_timeout = scaled(self.target.timeout, self.part_size as u64);
        let mut hasher = Sha256::new();
        let streamed = async {
            let mut received = 0u64;
            while let Some(chunk) = self
                .source
                .bounded_store("read source object", stream.try_next())
                .await?
            {
                hasher.update(&chunk);
                received += chunk.len() as u64;
                match &mut sink {
                    Sink::Whole(chunks) => chunks.push(chunk),
                    Sink::Parts(writer) => {
                        let room = writer.wait_for_capacity(PARTS_IN_FLIGHT);
                        with_timeout(&self.target, part_timeout, "upload part", room).await?;
                        writer.put(chunk);
                    }
                }
            }
            check_size(object, received)
        }
        .await;
        match (streamed, sink) {
            (Ok(()), Sink::Whole(chunks)) => {
                let payload: PutPayload = chunks.into_iter().collect();
                let options = PutOptions::from(PutMode::Overwrite);
                let put = self
                    .target
                    .store
                    .main
                    .put_opts(&object.to, payload, options);
                let timeout = scaled(self.target.timeout, object.size);
                with_timeout(&self.target, timeout, "write target object", put).await?;
            }
            (Ok(()), Sink::Parts(writer)) => {
                let finish = writer.finish();
                with_timeout(
                    &self.target,
                    part_timeout,
                    "complete multipart upload",
                    finish,
                )
                .await?;
            }
            (Err(error), Sink::Parts(writer)) => {
                if let Err(abort) = writer.abort().await {
                    tracing::debug!(%abort, object = %object.to, "aborting a multipart upload failed");
                }
                return Err(error);
            }
            (Err(error), Sink::Whole(_)) => return Err(error),
        }
        Ok(hasher.finalize().into())
    }
}

/// Where an object's content goes as it is read: gathered for one PUT, or uploaded in parts.
enum Sink {
    Whole(Vec<bytes::Bytes>),
    Parts(WriteMultipart),
}

/// A request's timeout for `bytes` of content: the base timeout plus a second per MiB, so that a
/// store at 1 MiB/s still makes it.
fn scaled(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_secs(bytes >> 20)
}

/// [`Database::bounded_store`] with another timeout.
async fn with_timeout<T>(
    database: &Database,
    timeout: Duration,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, object_store::Error>>,
) -> Result<T, EngineError> {
    let mut longer = database.clone();
    longer.timeout = timeout;
    longer.bounded_store(operation, call).await
}

/// The source's objects never change, so a length other than the listed size is corruption.
fn check_size(object: &ObjectMove, received: u64) -> Result<(), EngineError> {
    if received == object.size {
        return Ok(());
    }
    Err(EngineError::Corrupt {
        object: object.from.to_string(),
        detail: format!(
            "read {received} bytes from the source, where it listed {}",
            object.size
        ),
    })
}
