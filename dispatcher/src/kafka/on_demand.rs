//! A topic made when it is first needed (a partner's dead-letter topic on its first dead
//! letter): by whichever instance needs it first; another instance making it at the same
//! moment is normal (`TopicAlreadyExists` is success).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::KafkaSettings;

/// A topic made on first use, then known to exist.
#[derive(Debug)]
pub struct TopicOnDemand {
    name: String,
    /// `None`: made by someone else (tests, benchmarks), never by us.
    make: Option<(KafkaSettings, i32)>,
    made: tokio::sync::OnceCell<()>,
}

impl TopicOnDemand {
    /// `name`, made with `partitions` partitions when first needed.
    pub fn new(name: String, settings: KafkaSettings, partitions: i32) -> Self {
        Self {
            name,
            make: Some((settings, partitions)),
            made: Default::default(),
        }
    }

    /// A topic that exists already.
    pub fn existing(name: String) -> Self {
        Self {
            name,
            make: None,
            made: tokio::sync::OnceCell::new_with(Some(())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the topic unless it is known to exist, trying again every second until it
    /// is made or `stop`. Returns whether it exists.
    pub async fn ensure(&self, stop: &CancellationToken) -> bool {
        if self.made.initialized() {
            return true;
        }
        let Some((settings, partitions)) = &self.make else {
            return true;
        };
        let made = self.made.get_or_try_init(|| async {
            loop {
                match settings
                    .ensure_topics(std::slice::from_ref(&self.name), *partitions, &[])
                    .await
                {
                    Ok(()) => {
                        tracing::info!(topic = %self.name, "topic made on first use");
                        return Ok(());
                    }
                    Err(error) => {
                        tracing::warn!(topic = %self.name, %error, "cannot make the topic yet; trying again")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return Err(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        made.await.is_ok()
    }
}
