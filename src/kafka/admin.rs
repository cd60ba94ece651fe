//! Topic administration: make sure the topics a service needs exist, with their
//! partition count, replication factor and configs (such as `cleanup.policy=compact`).
//!
//! rskafka's `create_topic` sends no configs, so this module speaks `CreateTopics`
//! itself (see `conn::wire`). Requests go to the controller, as Kafka
//! requires; creation is asynchronous in Kafka, so `ensure_topics` waits until every
//! partition has a leader before it returns.

use crate::kafka::fix::Fix;
use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeConfigsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use crate::kafka::conn::ClusterConfig;
use crate::kafka::conn::wire::{Connection, WireError};

/// What a topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// `-1` lets the broker apply its `default.replication.factor`.
    pub replication_factor: i16,
    /// Topic configs, such as `cleanup.policy=compact`.
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions, the broker's replication factor and no configs.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the replication factor; -1 (the default) is the broker's own default.
    pub fn replication_factor(mut self, replication_factor: i16) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    /// Adds a topic config.
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(name.into(), value.into());
        self
    }

    /// `cleanup.policy=compact`: the broker keeps the latest record of each key.
    pub fn compacted(self) -> Self {
        self.config("cleanup.policy", "compact")
    }
}

/// What `ensure_topics` found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was created.
    Created,
    /// The topic was there already; it is left as it is.
    Existed {
        /// Its partition count.
        partitions: i32,
    },
}

/// Errors of topic administration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No broker address was given.
    #[error("no Kafka broker configured")]
    NoBrokers,
    /// The connection to a broker failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The broker refused to create the topic.
    #[error("the broker refused to create topic {topic:?}: {error}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error code, by name.
        error: String,
        /// The broker's message, if it sent one.
        message: Option<String>,
    },
    /// The broker could not describe the topic's configs.
    #[error("the broker could not describe topic {topic:?}: {error}")]
    Describe {
        /// The topic.
        topic: String,
        /// The broker's error code, by name.
        error: String,
    },
    /// The topic was created but not every partition has a leader yet.
    #[error("topic {topic:?} has no leader for every partition after {waited:?}")]
    NotReady {
        /// The topic.
        topic: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The cluster's metadata names no broker to send admin requests to.
    #[error("the broker's metadata names no controller and no broker")]
    NoController,
}

impl AdminError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::NoBrokers => Some(Fix::Brokers),
            Self::Wire(e) => e.fix(),
            _ => None,
        }
    }
}

/// Topic administration against one cluster.
#[derive(Debug, Clone)]
pub struct Admin {
    config: ClusterConfig,
}

/// One partition as the cluster's metadata describes it ([`Admin::partitions`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// The node that leads it, if one does.
    pub leader: Option<i32>,
    /// The nodes that hold a replica.
    pub replicas: Vec<i32>,
    /// The replicas in sync with the leader (the ISR).
    pub in_sync: Vec<i32>,
}

impl PartitionState {
    /// Whether every replica is in sync.
    pub fn fully_replicated(&self) -> bool {
        self.leader.is_some() && self.in_sync.len() == self.replicas.len()
    }
}

impl Admin {
    /// Administration of the cluster `config` describes.
    pub fn new(config: ClusterConfig) -> Self {
        Self { config }
    }

    /// Creates the topics that do not exist yet; leaves existing ones alone (a
    /// partition count that differs from the spec is logged, never changed:
    /// adding partitions would move keys to other partitions).
    pub async fn ensure_topics(
        &self,
        specs: &[TopicSpec],
    ) -> Result<Vec<(String, TopicOutcome)>, AdminError> {
        let mut conn = self.bootstrap().await?;
        let cluster = metadata(&mut conn, None).await?;
        let mut conn = self.controller(conn, &cluster).await?;

        let request = CreateTopicsRequest::default()
            .with_timeout_ms(self.config.request_timeout.as_millis() as i32)
            .with_topics(specs.iter().map(creatable).collect());
        let response = conn.request(&request).await?;

        let mut outcomes = Vec::with_capacity(specs.len());
        for spec in specs {
            let result = response
                .topics
                .iter()
                .find(|t| t.name.0.as_str() == spec.name);
            let code = result.map_or(0, |r| r.error_code);
            let outcome = match ResponseError::try_from_code(code) {
                None => TopicOutcome::Created,
                // The partition count is read once every topic has its leaders.
                Some(ResponseError::TopicAlreadyExists) => TopicOutcome::Existed { partitions: -1 },
                Some(error) => {
                    return Err(AdminError::Create {
                        topic: spec.name.clone(),
                        error: format!("{error:?} ({code})"),
                        message: result
                            .and_then(|r| r.error_message.as_ref())
                            .map(std::string::ToString::to_string),
                    });
                }
            };
            if outcome == TopicOutcome::Created {
                log::info!(
                    "created topic {} ({} partitions{})",
                    spec.name,
                    spec.partitions,
                    spec.configs.iter().fold(String::new(), |mut all, (k, v)| {
                        all.push_str(&format!(", {k}={v}"));
                        all
                    })
                );
            }
            outcomes.push((spec.name.clone(), outcome));
        }

        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        // Read once the leaders are up: a topic another client was creating at the
        // same moment has its partitions only now.
        let topics = self.wait_for_leaders(&mut conn, &names).await?;
        for ((name, outcome), spec) in outcomes.iter_mut().zip(specs) {
            if let TopicOutcome::Existed { partitions } = outcome {
                *partitions = partition_count(&topics, name).unwrap_or(-1);
                if *partitions != spec.partitions {
                    log::warn!(
                        "topic {name} has {partitions} partitions, not the {} configured; leaving it as it is",
                        spec.partitions
                    );
                }
            }
        }
        Ok(outcomes)
    }

    /// Partition counts of the given topics, `None` for topics that do not exist.
    pub async fn partition_counts(&self, topics: &[&str]) -> Result<Vec<Option<i32>>, AdminError> {
        let mut conn = self.bootstrap().await?;
        let metadata = metadata(&mut conn, Some(topics)).await?;
        Ok(topics
            .iter()
            .map(|t| partition_count(&metadata, t))
            .collect())
    }

    /// Each partition of `topic` as the cluster's metadata describes it now, by
    /// partition: its leader, its replicas and those in sync. Empty when the
    /// topic does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionState>, AdminError> {
        let mut conn = self.bootstrap().await?;
        let metadata = metadata(&mut conn, Some(&[topic])).await?;
        let mut states = Vec::new();
        if let Some(t) = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        {
            states = vec![PartitionState::default(); t.partitions.len()];
            for p in &t.partitions {
                if let Some(state) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| states.get_mut(i))
                {
                    *state = PartitionState {
                        leader: (p.error_code == 0 && p.leader_id.0 >= 0).then_some(p.leader_id.0),
                        replicas: p.replica_nodes.iter().map(|n| n.0).collect(),
                        in_sync: p.isr_nodes.iter().map(|n| n.0).collect(),
                    };
                }
            }
        }
        Ok(states)
    }

    /// The configs the broker reports for `topic` (`DescribeConfigs`).
    pub async fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, String>, AdminError> {
        /// Kafka's `ConfigResource.Type.TOPIC`.
        const TOPIC_RESOURCE: i8 = 2;
        let mut conn = self.bootstrap().await?;
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_string(topic.to_owned())),
        ]);
        let response = conn.request(&request).await?;
        let mut configs = BTreeMap::new();
        for result in response.results {
            if let Some(error) = ResponseError::try_from_code(result.error_code) {
                return Err(AdminError::Describe {
                    topic: topic.to_owned(),
                    error: format!("{error:?} ({})", result.error_code),
                });
            }
            for c in result.configs {
                if let Some(v) = c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
        }
        Ok(configs)
    }

    async fn bootstrap(&self) -> Result<Connection, AdminError> {
        if self.config.brokers.is_empty() {
            return Err(AdminError::NoBrokers);
        }
        Ok(Connection::bootstrap(&self.config).await?)
    }

    /// A connection to the controller, reusing `conn` when it already is one.
    async fn controller(
        &self,
        conn: Connection,
        metadata: &MetadataResponse,
    ) -> Result<Connection, AdminError> {
        let broker = metadata
            .brokers
            .iter()
            .find(|b| b.node_id == metadata.controller_id)
            .or_else(|| metadata.brokers.first())
            .ok_or(AdminError::NoController)?;
        let addr = format!("{}:{}", broker.host, broker.port);
        if addr == conn.addr() || metadata.brokers.len() == 1 {
            return Ok(conn);
        }
        Ok(Connection::connect(
            &addr,
            &self.config.client_id,
            self.config.request_timeout,
            &self.config.security,
        )
        .await?)
    }

    /// Polls the metadata of `topics`, all in one request, until every partition
    /// of each has a leader; returns that metadata.
    async fn wait_for_leaders(
        &self,
        conn: &mut Connection,
        topics: &[&str],
    ) -> Result<MetadataResponse, AdminError> {
        let started = Instant::now();
        let limit = self.config.request_timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let response = metadata(conn, Some(topics)).await?;
            let not_ready = topics.iter().find(|name| {
                !response.topics.iter().any(|t| {
                    t.name.as_ref().is_some_and(|n| n.0.as_str() == **name)
                        && t.error_code == 0
                        && !t.partitions.is_empty()
                        && t.partitions
                            .iter()
                            .all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
                })
            });
            let Some(topic) = not_ready else {
                return Ok(response);
            };
            if started.elapsed() > limit {
                return Err(AdminError::NotReady {
                    topic: (*topic).to_owned(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

fn creatable(spec: &TopicSpec) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(spec.name.clone())))
        .with_num_partitions(spec.partitions)
        .with_replication_factor(spec.replication_factor)
        .with_configs(
            spec.configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        )
}

async fn metadata(
    conn: &mut Connection,
    topics: Option<&[&str]>,
) -> Result<MetadataResponse, WireError> {
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string((*n).to_owned()))))
                })
                .collect()
        }));
    conn.request(&request).await
}

fn partition_count(metadata: &MetadataResponse, topic: &str) -> Option<i32> {
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)
        .map(|t| t.partitions.len() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_builder_defaults_to_broker_replication() {
        let spec = TopicSpec::new("t", 3).compacted();
        assert_eq!(spec.replication_factor, -1);
        assert_eq!(spec.configs["cleanup.policy"], "compact");
        let wire = creatable(&spec);
        assert_eq!(wire.num_partitions, 3);
        assert_eq!(wire.configs.len(), 1);
    }
}
