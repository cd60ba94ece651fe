//! TLS and SASL against Apache Kafka: a TLS listener with a certificate of a
//! throwaway CA (`EDA_BROKER_TLS=1`), SASL (`EDA_BROKER_AUTH=1`) with PLAIN and
//! SCRAM users made by Kafka's own `kafka-configs` tool, and both (SASL_SSL).
//! Producing, consuming and topic creation work through each; a certificate the
//! client does not trust and a wrong password fail at once with an error that
//! names the setting to fix and never the password.

mod support;

use std::time::{Duration, Instant};

use rust_eda::kafka::{
    Admin, Cluster, ClusterConfig, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, Sasl,
    SaslMechanism, Security, Tls, TopicSpec,
};
use rust_eda::secret::Secret;
use support::{PrivateBroker, RunningConsumer, cluster_config, unique, within};

const PASSWORD_256: &str = "pw-256-Zq8!";
const PASSWORD_512: &str = "pw-512-Xy7?";
const PASSWORD_PLAIN: &str = "pw-plain-Wv6#";

fn config(broker: &PrivateBroker, security: Security) -> ClusterConfig {
    let mut config = cluster_config(&broker.brokers());
    config.security = security;
    config
}

fn sasl(mechanism: SaslMechanism, username: &str, password: &str) -> Sasl {
    Sasl {
        mechanism,
        username: username.to_owned(),
        password: Secret::new(password),
    }
}

fn trusted(broker: &PrivateBroker) -> Tls {
    Tls::new(Some(&broker.ca())).expect("the broker's CA loads")
}

/// Creates a topic, produces 50 keyed records and reads them back in a group.
async fn round_trip(config: ClusterConfig) {
    let _ = env_logger::builder().is_test(true).try_init();
    let cluster = within(30, "connecting", Cluster::connect(config.clone()))
        .await
        .expect("connect");
    let topic = unique("secure");
    within(
        30,
        "creating a topic",
        Admin::new(config).ensure_topics(&[TopicSpec::new(&topic, 3)]),
    )
    .await
    .expect("topic");
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    for i in 0..50 {
        let record = ProducerRecord::new(&topic)
            .key(format!("k{}", i % 7))
            .value(format!("v{i}"));
        within(30, "producing", producer.send(record))
            .await
            .expect("delivered");
    }
    let mut consumer_config = ConsumerConfig::new(unique("g"), [topic.as_str()]);
    consumer_config.offsets_topic = unique("offsets");
    consumer_config.fetch_max_wait = Duration::from_millis(100);
    let mut consumer = RunningConsumer::start(&cluster, consumer_config).await;
    let messages = consumer.take(50, 60).await;
    let mut values: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap_or_default().to_vec()).unwrap())
        .collect();
    values.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
    assert_eq!(values, (0..50).map(|i| format!("v{i}")).collect::<Vec<_>>());
    consumer.stop().await;
    producer.close().await;
}

/// Connects expecting a failure; returns its message and how long it took.
async fn refused(config: ClusterConfig) -> (String, Duration) {
    let started = Instant::now();
    let error = within(30, "a refused connection", Cluster::connect(config))
        .await
        .expect_err("the connection must be refused");
    // As the services report it: the Kafka layer's message and the setting
    // that fixes it.
    let message = format!("{error}{}", rust_eda::config::hint(error.fix()));
    (message, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_carries_the_kafka_layer_and_refuses_an_untrusted_certificate() {
    let broker = PrivateBroker::start_secured(true, &[]);
    round_trip(config(
        &broker,
        Security {
            tls: Some(trusted(&broker)),
            sasl: None,
        },
    ))
    .await;

    // The built-in Mozilla roots do not know the throwaway CA.
    let (message, took) = refused(config(
        &broker,
        Security {
            tls: Some(Tls::new(None).unwrap()),
            sasl: None,
        },
    ))
    .await;
    assert!(message.contains("not trusted"), "{message}");
    assert!(message.contains("APP_KAFKA_SSL_CA_LOCATION"), "{message}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {message}");

    // Plaintext against a TLS listener is a clear error too, not a hang.
    let (message, _) = refused(config(&broker, Security::default())).await;
    assert!(message.contains(&broker.brokers()), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_plain_and_scram_authenticate_and_a_wrong_password_is_refused() {
    let broker = PrivateBroker::start_secured(
        false,
        &[
            ("alice", PASSWORD_256, "scram256"),
            ("bob", PASSWORD_512, "scram512"),
            ("dave", PASSWORD_PLAIN, "plain"),
        ],
    );
    for (mechanism, user, password) in [
        (SaslMechanism::ScramSha256, "alice", PASSWORD_256),
        (SaslMechanism::ScramSha512, "bob", PASSWORD_512),
        (SaslMechanism::Plain, "dave", PASSWORD_PLAIN),
    ] {
        round_trip(config(
            &broker,
            Security {
                tls: None,
                sasl: Some(sasl(mechanism, user, password)),
            },
        ))
        .await;
    }

    let wrong = "not-the-password";
    for mechanism in [SaslMechanism::ScramSha512, SaslMechanism::Plain] {
        let user = if mechanism == SaslMechanism::Plain {
            "dave"
        } else {
            "bob"
        };
        let (message, took) = refused(config(
            &broker,
            Security {
                tls: None,
                sasl: Some(sasl(mechanism, user, wrong)),
            },
        ))
        .await;
        assert!(message.contains("refused the credentials"), "{message}");
        assert!(message.contains("APP_KAFKA_SASL_PASSWORD"), "{message}");
        assert!(!message.contains(wrong), "{message}");
        assert!(took < Duration::from_secs(5), "took {took:?}: {message}");
    }

    // A SCRAM user has no PLAIN password, and the other way round.
    for (mechanism, user, password) in [
        (SaslMechanism::Plain, "alice", PASSWORD_256),
        (SaslMechanism::ScramSha256, "dave", PASSWORD_PLAIN),
    ] {
        let (message, _) = refused(config(
            &broker,
            Security {
                tls: None,
                sasl: Some(sasl(mechanism, user, password)),
            },
        ))
        .await;
        assert!(message.contains("refused the credentials"), "{message}");
    }

    // Without credentials the broker answers nothing but the handshake.
    let (message, _) = refused(config(&broker, Security::default())).await;
    assert!(!message.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_ssl_carries_the_kafka_layer() {
    let broker = PrivateBroker::start_secured(true, &[("carol", PASSWORD_512, "scram512")]);
    round_trip(config(
        &broker,
        Security {
            tls: Some(trusted(&broker)),
            sasl: Some(sasl(SaslMechanism::ScramSha512, "carol", PASSWORD_512)),
        },
    ))
    .await;
}
