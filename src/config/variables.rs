//! Every `APP_*` variable with its default and meaning: the one place a
//! default is written. The parser reads defaults from here, and the reference
//! in `docs/configuration.md` is generated from here.

/// One configuration variable: its name, its default as an operator would
/// write it, and what it sets. The parser reads its defaults from here, and
/// `docs/configuration.md` is generated from here, so each default is written
/// once.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    /// The variable's name.
    pub name: &'static str,
    /// Its default.
    pub default: Default,
    /// What it sets, for the reference.
    pub help: &'static str,
}

/// A variable's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// This value.
    Value(&'static str),
    /// Unset: the feature is off, or the value is required with another one.
    Unset,
    /// A default that depends on the service, in words.
    PerService(&'static str),
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: Default::Value(default),
        help,
    }
}

const fn unset(name: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: Default::Unset,
        help,
    }
}

const fn per_service(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default: Default::PerService(default),
        help,
    }
}

/// Every variable the services read, in the order the reference lists them.
pub const VARIABLES: &[Variable] = &[
    var(
        "APP_SERVER_HOST",
        "0.0.0.0",
        "address the order API binds to",
    ),
    var(
        "APP_SERVER_PORT",
        "8080",
        "port of the order API (0 picks a free one)",
    ),
    var(
        "APP_SERVER_MAX_IN_FLIGHT",
        "1024",
        "requests served at once; more get `503` with `Retry-After` instead of queueing",
    ),
    var(
        "APP_SERVER_MAX_CONNECTIONS_PER_CLIENT",
        "64",
        "connections one client address may hold (an IPv6 address by its /64), and so its requests in flight; more are closed at once; `0` is no limit, for a server behind a proxy",
    ),
    var(
        "APP_SERVER_REQUEST_TIMEOUT_MS",
        "15000",
        "longest a request may take (`503` after); more than the publish timeout",
    ),
    var(
        "APP_SERVER_HEADER_TIMEOUT_MS",
        "5000",
        "a client that does not send its headers in time is disconnected",
    ),
    per_service(
        "APP_METRICS_PORT",
        "`9103` order, `9101` inventory, `9102` notification",
        "port of each service's `/metrics`, `/health` and `/ready`, for the internal network (the order API's port does not serve `/metrics`)",
    ),
    var(
        "APP_SERVER_RATE_LIMIT_PER_SECOND",
        "20",
        "order API requests per second per client (the token's customer, or the address of a request without a valid token); more get `429` with `Retry-After`; `0` turns the limit off",
    ),
    var(
        "APP_SERVER_RATE_LIMIT_BURST",
        "40",
        "requests a client may send at once above that rate",
    ),
    var(
        "APP_AUTH_MODE",
        "jwt",
        "who may call the order API: `jwt` (bearer JWTs), `api_keys` (bearer keys from `APP_AUTH_API_KEYS_FILE`) or `off` (anyone, for local development only; logged loudly)",
    ),
    unset(
        "APP_AUTH_JWT_HS256_SECRET",
        "shared secret of HS256 tokens, at least 32 bytes; never logged (or `APP_AUTH_JWT_HS256_SECRET_FILE`)",
    ),
    unset(
        "APP_AUTH_JWT_HS256_SECRET_FILE",
        "file holding the HS256 secret (a trailing newline is dropped)",
    ),
    unset(
        "APP_AUTH_JWT_PUBLIC_KEY_FILE",
        "PEM public key of RS256 (RSA) or ES256 (P-256) tokens",
    ),
    unset(
        "APP_AUTH_JWKS_FILE",
        "JSON Web Key Set of the token issuer (RS256, ES256 or HS256 keys, chosen by the token's `kid`); read at start",
    ),
    unset(
        "APP_AUTH_JWT_ISSUER",
        "when set, tokens must carry this `iss`",
    ),
    unset(
        "APP_AUTH_JWT_AUDIENCE",
        "tokens must carry this `aud`; needed with a public key or a JWKS (an identity provider signs for many applications), where `*` takes any audience",
    ),
    var(
        "APP_AUTH_CUSTOMER_CLAIM",
        "sub",
        "the token claim that names the customer",
    ),
    var(
        "APP_AUTH_JWT_LEEWAY_SECONDS",
        "30",
        "clock skew allowed on `exp` and `nbf`",
    ),
    unset(
        "APP_AUTH_API_KEYS_FILE",
        "with `APP_AUTH_MODE=api_keys`: lines of `customer-id key`, the key plain (16+ characters) or as `sha256:<hex>`",
    ),
    var(
        "APP_KAFKA_BROKERS",
        "localhost:9092",
        "bootstrap brokers, `host:port[,…]`",
    ),
    var(
        "APP_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (see [TLS and SASL](#tls-and-sasl))",
    ),
    unset(
        "APP_KAFKA_SSL_CA_LOCATION",
        "PEM file of the CA(s) that signed the brokers' certificates; without it, the Mozilla roots built into the binary",
    ),
    unset(
        "APP_KAFKA_SASL_MECHANISM",
        "`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with `SASL_*`, with username and password",
    ),
    unset("APP_KAFKA_SASL_USERNAME", "SASL user"),
    unset(
        "APP_KAFKA_SASL_PASSWORD",
        "SASL password; never logged (prints as `***`)",
    ),
    unset(
        "APP_KAFKA_SASL_PASSWORD_FILE",
        "file holding the SASL password, instead of `APP_KAFKA_SASL_PASSWORD`",
    ),
    per_service(
        "APP_KAFKA_GROUP_ID",
        "the service name",
        "consumer group of inventory and notification",
    ),
    per_service(
        "APP_KAFKA_CLIENT_ID",
        "the service name",
        "client id sent to the broker",
    ),
    var(
        "APP_KAFKA_TOPIC_PARTITIONS",
        "6",
        "partitions of the topics the services create",
    ),
    var(
        "APP_KAFKA_REPLICATION_FACTOR",
        "-1",
        "replication factor of created topics; -1 is the broker's default",
    ),
    var(
        "APP_KAFKA_CREATE_TOPICS",
        "true",
        "create missing topics at start",
    ),
    var(
        "APP_KAFKA_COMPRESSION",
        "none",
        "`none`, `gzip` or `snappy`",
    ),
    var(
        "APP_KAFKA_REQUEST_TIMEOUT_MS",
        "10000",
        "how long a request to a broker may go unanswered before it is given up and sent again (after a fresh look at who leads): what a broker that hangs (paused, cut off) costs before a new leader is used",
    ),
    var(
        "APP_KAFKA_SESSION_TIMEOUT_MS",
        "10000",
        "a group member silent this long is dead; its partitions move",
    ),
    var(
        "APP_KAFKA_HEARTBEAT_INTERVAL_MS",
        "1000",
        "how often members heartbeat (at most a third of the session timeout)",
    ),
    var(
        "APP_KAFKA_REBALANCE_GRACE_MS",
        "1000",
        "wait before taking over a dead member's partitions",
    ),
    var(
        "APP_KAFKA_FETCH_MAX_WAIT_MS",
        "500",
        "longest a fetch on an order's path waits for data when none is there; Kafka answers at once when data arrives (set 50 on nisshi, see [brokers](brokers.md))",
    ),
    var(
        "APP_KAFKA_VIEW_MAX_WAIT_MS",
        "500",
        "the same for readers that only keep a view current (order status, what was already published or notified)",
    ),
    var(
        "APP_KAFKA_LINGER_MS",
        "0",
        "how long an event may wait for others to share its batch; each hop waits for its events' acknowledgement, so a linger adds to every hop (batches still form while a request is in flight)",
    ),
    var(
        "APP_KAFKA_MAX_ATTEMPTS",
        "10",
        "a consumed record that failed this many times is parked in `<topic>.dlq` (about 30 s of backoff)",
    ),
    var(
        "APP_KAFKA_IDEMPOTENCE",
        "true",
        "producers write each batch once however often a retry sends it (producer ids and sequence numbers); `false` for a cluster whose ACLs refuse `IdempotentWrite`",
    ),
    var(
        "APP_KAFKA_MAX_IN_FLIGHT",
        "5",
        "produce requests on their way per partition at once with idempotence, 1 to 5 (Java's `max.in.flight.requests.per.connection`); order holds either way, and without idempotence one goes at a time",
    ),
    var(
        "APP_KAFKA_PROCESSING_GUARANTEE",
        "exactly_once",
        "`exactly_once`: inventory and notification write their output and their input's offsets in one transaction, so `read_committed` readers see each outcome once; `at_least_once`: output is written again for records handled again after a crash (the fallback on a cluster without transactions)",
    ),
    var(
        "APP_KAFKA_TRANSACTION_TIMEOUT_MS",
        "60000",
        "under exactly-once, how long a transaction may stay open before the broker aborts it (at most the broker's `transaction.max.timeout.ms`); each handler call is cut off at four fifths of it and counts as a failed attempt, so it must exceed a webhook call's whole budget",
    ),
    var(
        "APP_KAFKA_FENCE_LEGACY_TRANSACTIONAL_IDS",
        "true",
        "under exactly-once, a member taking a partition also fences the transactional id that earlier versions used for it (`<group>-<topic>-<partition>`; now `<group>-txn/<topic>/<partition>`), so that an instance of such a version still running during a rolling upgrade cannot commit; `false` once none runs",
    ),
    var(
        "APP_LOGGER_LEVEL",
        "info",
        "`trace`, `debug`, `info`, `warn`, `error`, `off` (`RUST_LOG` refines it)",
    ),
    var(
        "APP_LOGGER_ENCODING",
        "json",
        "`json` (one object per line) or `console`",
    ),
    var(
        "APP_ORDER_PUBLISH_TIMEOUT_MS",
        "5000",
        "how long `POST` waits for the broker before answering 503",
    ),
    var(
        "APP_ORDER_IDEMPOTENCY_RETENTION_HOURS",
        "24",
        "how long an `Idempotency-Key` answers with its order",
    ),
    unset(
        "APP_ORDER_IDEMPOTENCY_SECRET",
        "key of the HMAC that turns a customer's `Idempotency-Key` into an order id, at least 32 bytes, the same on every instance; required by the order service (or `APP_ORDER_IDEMPOTENCY_SECRET_FILE`)",
    ),
    unset(
        "APP_ORDER_IDEMPOTENCY_SECRET_FILE",
        "file holding the idempotency secret",
    ),
    var(
        "APP_INVENTORY_STOCK_FILE",
        "configs/stock.json",
        "initial stock, a JSON object of product id → quantity",
    ),
    unset(
        "APP_NOTIFICATION_WEBHOOK_URL",
        "`http://` URL that receives every outcome as a POST",
    ),
    var(
        "APP_NOTIFICATION_WEBHOOK_TIMEOUT_MS",
        "5000",
        "timeout of one webhook call",
    ),
    var(
        "APP_NOTIFICATION_WEBHOOK_RETRIES",
        "5",
        "retries of a failed webhook call, with backoff",
    ),
];

/// The variables' reference as a Markdown table, as `docs/configuration.md`
/// holds it.
pub fn reference_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for v in VARIABLES {
        let default = match v.default {
            Default::Value(d) => format!("`{d}`"),
            Default::Unset => "–".to_owned(),
            Default::PerService(d) => d.to_owned(),
        };
        out.push_str(&format!("| `{}` | {default} | {} |\n", v.name, v.help));
    }
    out
}
