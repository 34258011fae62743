//! The forward stage's hand-off: each batch the source reads is produced to Kafka in the
//! background, up to --max-in-flight batches at once (shared by every reader), and
//! acknowledged in its stream as soon as its own delivery completes, in any order.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::BatchOpts;
use crate::retry::Fatal;
use crate::sinks::kafka::Forwarder;
use crate::source::{Batch, Downstream};

pub(crate) struct Forward {
    kafka: Arc<Forwarder>,
    batch: BatchOpts,
    shutdown: CancellationToken,
    /// one permit per batch in flight (--max-in-flight)
    slots: Arc<Semaphore>,
    deliveries: Mutex<JoinSet<()>>,
}

impl Forward {
    pub(crate) fn new(
        kafka: Arc<Forwarder>,
        batch: BatchOpts,
        shutdown: CancellationToken,
    ) -> Self {
        Forward {
            kafka,
            slots: Arc::new(Semaphore::new(batch.max_in_flight.max(1))),
            batch,
            shutdown,
            deliveries: Mutex::new(JoinSet::new()),
        }
    }

    fn deliveries(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Downstream for Forward {
    async fn take(&self, batch: Batch) {
        while let Some(res) = self.deliveries().try_join_next() {
            log_task_end(res);
        }
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return; // never closed; the batch's entries stay pending
        };
        let (kafka, opts, shutdown) = (
            self.kafka.clone(),
            self.batch.clone(),
            self.shutdown.clone(),
        );
        self.deliveries().spawn(async move {
            let _permit = permit;
            kafka.deliver(&batch.records, &opts).await;
            batch.in_flight.ack(&opts, &shutdown).await;
        });
    }

    /// Kafka deliveries are retried until they succeed, so none ends in a `Fatal`.
    async fn finish(&self) -> Result<(), Fatal> {
        let mut deliveries = std::mem::take(&mut *self.deliveries());
        while let Some(res) = deliveries.join_next().await {
            log_task_end(res);
        }
        Ok(())
    }
}

fn log_task_end(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "a delivery task ended abnormally; its entries stay pending and are re-read");
    }
}
