//! What an operator can change to clear an error. The Kafka layer's errors say
//! what went wrong, with the data (a broker, a topic, a mechanism); their
//! `fix()` says which of these would clear it, and the services name the
//! setting or the command that does it.

/// A change that clears an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fix {
    /// Configure the bootstrap brokers: none are, or a host is not among them.
    Brokers,
    /// Check the bootstrap brokers and that a broker runs there.
    BrokerRunning,
    /// Create the topic.
    CreateTopics,
    /// Match the security protocol to the listener (TLS or not).
    SecurityProtocol,
    /// Trust the CA that signed the broker's certificate.
    CaLocation,
    /// Pick a SASL mechanism the broker offers.
    SaslMechanism,
    /// Correct the SASL user name and password.
    SaslCredentials,
    /// Name the consumer group.
    GroupId,
    /// Have the broker stamp the coordination topic's records
    /// (`message.timestamp.type=LogAppendTime`).
    LogAppendTime,
}
