//! Who may create and read an order: bearer tokens (HS256, RS256, ES256, a
//! JWKS file, static API keys), reads and writes scoped to the token's
//! customer, order ids nobody can compute without the server's secret, the
//! per-client rate limit, and `/metrics` off the public port. The order
//! service runs in-process over the shared test broker (each test with its
//! own instance); the binary runs where the test is about its start-up or its
//! `mint-token` command.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rust_eda::domain::{IdempotencyKey, OrderId, OrderIdKey};
use rust_eda::http_client::HttpResponse;
use serde_json::{Value, json};
use support::api::Api;
use support::auth::{ID_SECRET, JWT_SECRET, bearer, now, token, token_of, token_signed_with};
use support::{brokers, repo_root, unique, within};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/auth").join(name)
}

fn pem(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(fixture(name)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn items(quantity: u64) -> Value {
    json!([{"product_id": "p-1", "quantity": quantity, "price": 2.5}])
}

/// A GET with `authorization` as given (none when `None`).
async fn get_as(api: &Api, path: &str, authorization: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    api.call(http::Method::GET, path, &headers, Bytes::new())
        .await
}

/// A POST of `body` with `authorization` as given, and an Idempotency-Key.
async fn post_as(
    api: &Api,
    body: &Value,
    authorization: Option<&str>,
    key: Option<&str>,
) -> HttpResponse {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    api.call(
        http::Method::POST,
        "/api/v1/orders",
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
}

/// A `401` with a JSON body saying why and RFC 6750's challenge.
fn assert_refused(r: &HttpResponse, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: a JSON body with the reason"
    );
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm=\"orders\"")),
        "{what}: WWW-Authenticate {:?}",
        r.header("www-authenticate")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_valid_token_get_a_json_401() {
    let api = Api::start_on(&brokers(), &[]).await;
    let order = json!({"customer_id": "c-1", "items": items(1)});
    let unknown = format!("/api/v1/orders/{}", uuid::Uuid::new_v4());

    let expired = token_from_claims(json!({"sub": "c-1", "exp": now() - 3600}));
    let not_yet =
        token_from_claims(json!({"sub": "c-1", "nbf": now() + 3600, "exp": now() + 7200}));
    let no_exp = token_from_claims(json!({"sub": "c-1"}));
    let no_subject = token_from_claims(json!({"exp": now() + 3600}));
    let forged = token_signed_with("someone-elses-secret-0123456789abcdef", "c-1");
    // The same claims unsigned: `alg: none` is never accepted.
    let unsigned = {
        let (header, claims) = (
            r#"{"alg":"none","typ":"JWT"}"#,
            json!({"sub": "c-1", "exp": now() + 3600}).to_string(),
        );
        format!(
            "{}.{}.",
            base64_url(header.as_bytes()),
            base64_url(claims.as_bytes())
        )
    };
    // RS256 with a key the service does not have, and a signature moved to
    // another payload.
    let rs256 = sign(
        Algorithm::RS256,
        None,
        &pem("rsa-private.pem", Algorithm::RS256),
        &json!({"sub": "c-1", "exp": now() + 3600}),
    );
    let tampered = {
        let good = token("c-1");
        let other = token("c-2");
        let sig = good.rsplit('.').next().unwrap();
        let (head, _) = other.rsplit_once('.').unwrap();
        format!("{head}.{sig}")
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("another scheme", Some("Basic YzoxOnBhc3N3b3Jk".to_owned())),
        ("an empty bearer", Some("Bearer ".to_owned())),
        ("not a JWT", Some("Bearer not-a-token".to_owned())),
        ("an expired token", Some(format!("Bearer {expired}"))),
        ("a token not valid yet", Some(format!("Bearer {not_yet}"))),
        ("a token without exp", Some(format!("Bearer {no_exp}"))),
        (
            "a token without a subject",
            Some(format!("Bearer {no_subject}")),
        ),
        (
            "a token signed with another secret",
            Some(format!("Bearer {forged}")),
        ),
        (
            "an unsigned token (alg none)",
            Some(format!("Bearer {unsigned}")),
        ),
        (
            "an RS256 token without its key",
            Some(format!("Bearer {rs256}")),
        ),
        (
            "a signature of another token",
            Some(format!("Bearer {tampered}")),
        ),
    ];
    for (what, authorization) in &cases {
        assert_refused(
            &get_as(&api, &unknown, authorization.as_deref()).await,
            what,
        );
        assert_refused(
            &post_as(&api, &order, authorization.as_deref(), None).await,
            what,
        );
    }
    // The refusals are counted by reason on the metrics port.
    let metrics = metrics_page(&api).await;
    for reason in ["missing", "expired", "signature", "invalid"] {
        assert!(
            metrics.contains(&format!(
                "eda_http_auth_refused_total{{reason=\"{reason}\"}}"
            )),
            "no refusal counted as {reason}:\n{metrics}"
        );
    }

    // Health, readiness and the API's documents stay open: probes and tools
    // read them without credentials.
    for path in [
        "/health",
        "/ready",
        "/api/v1/openapi.json",
        "/api/v1/asyncapi.json",
    ] {
        assert_eq!(get_as(&api, path, None).await.status, 200, "{path}");
    }
    // A valid token passes; the order is its customer's.
    let ok = post_as(&api, &order, Some(&bearer("c-1")), None).await;
    assert_eq!(ok.status, 201, "{:?}", ok.json());
    api.stop().await;
}

/// A token signed with the test secret for `claims`.
fn token_from_claims(claims: Value) -> String {
    token_of(JWT_SECRET, &claims)
}

/// Base64url without padding, as JWS segments are written.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

async fn metrics_page(api: &Api) -> String {
    support::metrics_page(api.metrics_port).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_creates_and_reads_only_its_own_orders() {
    let api = Api::start_on(&brokers(), &[]).await;
    let (alice, bob) = (bearer("alice"), bearer("bob"));

    // The body may name the token's customer, or leave it out.
    let named = post_as(
        &api,
        &json!({"customer_id": "alice", "items": items(1)}),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(named.status, 201, "{:?}", named.json());
    let implied = post_as(&api, &json!({"items": items(2)}), Some(&alice), None).await;
    assert_eq!(implied.status, 201, "{:?}", implied.json());
    assert_eq!(implied.json()["customer_id"], "alice");
    let id = implied.json()["order_id"].as_str().unwrap().to_owned();

    // Bob ordering for Alice is forbidden, and says which field.
    let for_alice = post_as(
        &api,
        &json!({"customer_id": "alice", "items": items(1)}),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(for_alice.status, 403);
    assert_eq!(for_alice.json()["details"][0]["field"], "customer_id");

    // Alice reads her order; Bob gets what he would for an order that does not
    // exist, so no answer tells him it does.
    let path = format!("/api/v1/orders/{id}");
    let mine = get_as(&api, &path, Some(&alice)).await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.json()["customer_id"], "alice");
    let theirs = get_as(&api, &path, Some(&bob)).await;
    let missing_id = uuid::Uuid::new_v4().to_string();
    let missing = get_as(&api, &format!("/api/v1/orders/{missing_id}"), Some(&bob)).await;
    assert_eq!((theirs.status, missing.status), (404, 404));
    assert_eq!(
        theirs.json().to_string().replace(&id, "ID"),
        missing.json().to_string().replace(&missing_id, "ID")
    );
    assert_eq!(theirs.headers.len(), missing.headers.len());
    api.stop().await;
}

/// A token's customer is an id exactly as an order's `customer_id` is: a
/// claim with white space around it (Unicode's too) or a control character is
/// refused, instead of acting as the customer the trimmed id names and reading
/// that customer's order through an `Idempotency-Key`.
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_claim_has_one_spelling() {
    let api = Api::start_on(&brokers(), &[]).await;
    let a = unique("alice");
    let key = "same-key-for-both";
    let real = post_as(
        &api,
        &json!({"items": items(1)}),
        Some(&bearer(&a)),
        Some(key),
    )
    .await;
    assert_eq!(real.status, 201, "{:?}", real.json());
    let id = real.json()["order_id"].as_str().unwrap().to_owned();
    for spelling in [
        format!("{a} "),
        format!(" {a}"),
        format!("{a}\u{a0}"),
        format!("{a}\u{2003}"),
        format!("{a}\u{7}"),
    ] {
        let lookalike = bearer(&spelling);
        let post = post_as(
            &api,
            &json!({"items": items(1)}),
            Some(&lookalike),
            Some(key),
        )
        .await;
        assert_refused(&post, &format!("POST as {spelling:?}"));
        assert_ne!(post.json()["order_id"], id.as_str(), "{spelling:?}");
        let get = get_as(&api, &format!("/api/v1/orders/{id}"), Some(&lookalike)).await;
        assert_refused(&get, &format!("GET as {spelling:?}"));
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_ids_from_idempotency_keys_need_the_server_secret() {
    let api = Api::start_on(&brokers(), &[]).await;
    let key = "checkout-cart-42";
    // Customers of this run only: the shared broker keeps earlier runs' orders.
    let (a, m) = (unique("alice"), unique("mallory"));
    let (alice, mallory) = (bearer(&a), bearer(&m));
    let order = |customer: &str| json!({"customer_id": customer, "items": items(1)});

    // Mallory uses Alice's key first: it is Mallory's own key, not a squat on
    // Alice's, and Alice's order is created as if Mallory had never posted.
    let squat = post_as(&api, &order(&m), Some(&mallory), Some(key)).await;
    assert_eq!(squat.status, 201);
    let real = post_as(&api, &order(&a), Some(&alice), Some(key)).await;
    assert_eq!(real.status, 201, "{:?}", real.json());
    assert_eq!(real.header("idempotent-replayed"), None);
    let id = real.json()["order_id"].as_str().unwrap().to_owned();
    assert_ne!(squat.json()["order_id"], id.as_str());
    let again = post_as(&api, &order(&a), Some(&alice), Some(key)).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["order_id"], id.as_str());

    // The id is the HMAC of the server's secret: computable with it, and not
    // with any other secret nor with the name-based UUID of earlier versions.
    let parsed_key = IdempotencyKey::parse(key).unwrap();
    let with = |secret: &str| {
        OrderId::for_idempotency_key(
            &OrderIdKey::new(secret.as_bytes()).unwrap(),
            &a,
            &parsed_key,
        )
        .to_string()
    };
    assert_eq!(with(ID_SECRET), id);
    assert_ne!(with("a-guess-at-the-secret-0123456789abcdef"), id);
    assert_ne!(
        OrderId::unkeyed_for_idempotency_key(&a, &parsed_key).to_string(),
        id
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let api = Api::start_on(
        &brokers(),
        &[
            ("APP_SERVER_RATE_LIMIT_PER_SECOND", "1"),
            ("APP_SERVER_RATE_LIMIT_BURST", "3"),
        ],
    )
    .await;
    let path = format!("/api/v1/orders/{}", uuid::Uuid::new_v4());
    let alice = bearer("alice");
    // The burst, then a refusal; the bucket refills at one a second, so the
    // fourth request of a tight loop cannot have a token back yet.
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let r = get_as(&api, &path, Some(&alice)).await;
        statuses.push(r.status);
        if r.status == 429 {
            refused = Some(r);
        }
    }
    assert_eq!(statuses, [404, 404, 404, 429]);
    let refused = refused.unwrap();
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert!(refused.json()["error"].as_str().unwrap().contains("retry"));

    // The limit is per client: another customer still gets through, and so do
    // the probes.
    assert_eq!(get_as(&api, &path, Some(&bearer("bob"))).await.status, 404);
    assert_eq!(get_as(&api, "/health", None).await.status, 200);
    // Requests without a valid token count against their address: a flood of
    // bad tokens ends in 429 too.
    let bad = Some("Bearer not-a-token");
    let mut last = 0;
    for _ in 0..4 {
        last = get_as(&api, &path, bad).await.status;
    }
    assert_eq!(last, 429);
    // An address over its budget is refused before its credentials are
    // checked, so that a flood costs no signature check per request: even a
    // valid token from it waits.
    assert_eq!(
        get_as(&api, &path, Some(&bearer("carol"))).await.status,
        429
    );

    // After the wait, Alice is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(get_as(&api, &path, Some(&alice)).await.status, 404);
    let metrics = metrics_page(&api).await;
    assert!(metrics.contains("eda_http_rate_limited_total"), "{metrics}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_on_their_own_port_only() {
    let api = Api::start_on(&brokers(), &[]).await;
    assert_ne!(api.port, api.metrics_port);
    let public = get_as(&api, "/metrics", None).await;
    assert_eq!(public.status, 404);
    assert!(
        public.json()["error"]
            .as_str()
            .unwrap()
            .contains("APP_METRICS_PORT"),
        "{:?}",
        public.json()
    );
    assert!(metrics_page(&api).await.contains("eda_http_requests_total"));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_es256_jwks_and_api_keys_authenticate_callers() {
    let dir = std::env::temp_dir().join(unique("eda-auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let claims = |sub: &str, aud: &str| json!({"sub": sub, "iss": "https://issuer.test/", "aud": aud, "exp": now() + 600});
    let order = json!({"items": items(1)});

    // A PEM public key, with issuer and audience checked.
    let rsa = pem("rsa-private.pem", Algorithm::RS256);
    let public_key = fixture("rsa-public.pem");
    let api = Api::start_on(
        &brokers(),
        &[
            ("APP_AUTH_JWT_HS256_SECRET", ""),
            ("APP_AUTH_JWT_PUBLIC_KEY_FILE", public_key.to_str().unwrap()),
            ("APP_AUTH_JWT_ISSUER", "https://issuer.test/"),
            ("APP_AUTH_JWT_AUDIENCE", "orders"),
        ],
    )
    .await;
    let good = sign(Algorithm::RS256, None, &rsa, &claims("carol", "orders"));
    let r = post_as(&api, &order, Some(&format!("Bearer {good}")), None).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["customer_id"], "carol");
    let other_aud = sign(Algorithm::RS256, None, &rsa, &claims("carol", "billing"));
    let other_key = sign(
        Algorithm::RS256,
        None,
        &pem("other-rsa-private.pem", Algorithm::RS256),
        &claims("carol", "orders"),
    );
    // HS256 signed with the public key's bytes: the classic key-confusion forgery.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("carol", "orders"),
        &EncodingKey::from_secret(&std::fs::read(&public_key).unwrap()),
    )
    .unwrap();
    for (what, t) in [
        ("another audience", other_aud),
        ("another key", other_key),
        ("HS256 with the public key as secret", confused),
        ("an HS256 token", token("carol")),
    ] {
        assert_refused(
            &post_as(&api, &order, Some(&format!("Bearer {t}")), None).await,
            what,
        );
    }
    api.stop().await;

    // A JWKS file with an RSA and an EC key; the token's kid picks one.
    let ec = pem("ec-private.pem", Algorithm::ES256);
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet {
            keys: vec![rsa_jwk, ec_jwk],
        })
        .unwrap(),
    )
    .unwrap();
    let api = Api::start_on(
        &brokers(),
        &[
            ("APP_AUTH_JWT_HS256_SECRET", ""),
            ("APP_AUTH_JWKS_FILE", jwks.to_str().unwrap()),
            // Any audience, asked for by name: these tokens carry none.
            ("APP_AUTH_JWT_AUDIENCE", "*"),
            ("APP_AUTH_CUSTOMER_CLAIM", "customer"),
        ],
    )
    .await;
    let by_claim = |alg, kid, key: &EncodingKey| {
        let claims = json!({"sub": "user-7", "customer": "dave", "exp": now() + 600});
        format!("Bearer {}", sign(alg, Some(kid), key, &claims))
    };
    for (alg, kid, key) in [
        (Algorithm::ES256, "ec-1", &ec),
        (Algorithm::RS256, "rsa-1", &rsa),
    ] {
        let r = post_as(&api, &order, Some(&by_claim(alg, kid, key)), None).await;
        assert_eq!(r.status, 201, "{alg:?}: {:?}", r.json());
        assert_eq!(r.json()["customer_id"], "dave", "the configured claim");
    }
    assert_refused(
        &post_as(
            &api,
            &order,
            Some(&by_claim(Algorithm::ES256, "unknown-kid", &ec)),
            None,
        )
        .await,
        "an unknown kid",
    );
    assert_refused(
        &post_as(
            &api,
            &order,
            Some(&by_claim(Algorithm::RS256, "ec-1", &rsa)),
            None,
        )
        .await,
        "an RS256 token naming the EC key",
    );
    api.stop().await;

    // Static API keys: a plain one and one stored as its SHA-256.
    let keys = dir.join("api-keys");
    let plain = "erin-key-0123456789abcdef";
    let hashed = "frank-key-0123456789abcdef";
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(hashed.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::write(
        &keys,
        format!("# customer key\nerin {plain}\nfrank sha256:{digest}\n"),
    )
    .unwrap();
    let api = Api::start_on(
        &brokers(),
        &[
            ("APP_AUTH_MODE", "api_keys"),
            ("APP_AUTH_JWT_HS256_SECRET", ""),
            ("APP_AUTH_API_KEYS_FILE", keys.to_str().unwrap()),
        ],
    )
    .await;
    for (customer, key) in [("erin", plain), ("frank", hashed)] {
        let r = post_as(&api, &order, Some(&format!("Bearer {key}")), None).await;
        assert_eq!(r.status, 201, "{customer}: {:?}", r.json());
        assert_eq!(r.json()["customer_id"], customer);
    }
    assert_refused(
        &post_as(&api, &order, Some("Bearer erin-key-0123456789abcdeX"), None).await,
        "an unknown API key",
    );
    api.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary: missing or malformed secrets stop it at start, naming the
/// setting and never printing the secret; `mint-token` makes a token the API
/// takes.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_refuses_to_start_without_its_secrets_and_mints_tokens() {
    // An empty folder: no ./config.env to pick up.
    let dir = std::env::temp_dir().join(unique("eda-auth-bin"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |set: Vec<(&'static str, String)>, args: &'static [&'static str]| {
        let dir = dir.clone();
        async move {
            let mut command =
                tokio::process::Command::from(support::service_command("order-service"));
            command
                .args(args)
                .env_clear()
                .env("APP_KAFKA_BROKERS", "127.0.0.1:1")
                .env("APP_SERVER_PORT", "0")
                .env("APP_METRICS_PORT", "0")
                .envs(set)
                .current_dir(&dir)
                .kill_on_drop(true);
            let out = within(30, "order-service exiting", command.output())
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let secret = |v: &str| v.to_owned();
    type Settings = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Settings, &str)> = vec![
        (
            "no idempotency secret",
            vec![("APP_AUTH_JWT_HS256_SECRET", secret(JWT_SECRET))],
            "APP_ORDER_IDEMPOTENCY_SECRET",
        ),
        (
            "no key to verify tokens",
            vec![("APP_ORDER_IDEMPOTENCY_SECRET", secret(ID_SECRET))],
            "APP_AUTH_JWT_HS256_SECRET",
        ),
        (
            "a short HS256 secret",
            vec![
                ("APP_AUTH_JWT_HS256_SECRET", secret("short-secret-1")),
                ("APP_ORDER_IDEMPOTENCY_SECRET", secret(ID_SECRET)),
            ],
            "APP_AUTH_JWT_HS256_SECRET",
        ),
        (
            "a secret file that is not there",
            vec![
                ("APP_AUTH_JWT_HS256_SECRET", secret(JWT_SECRET)),
                (
                    "APP_ORDER_IDEMPOTENCY_SECRET_FILE",
                    secret("/nonexistent/idempotency.secret"),
                ),
            ],
            "APP_ORDER_IDEMPOTENCY_SECRET_FILE",
        ),
        (
            "a public key file that is no key",
            vec![
                (
                    "APP_AUTH_JWT_PUBLIC_KEY_FILE",
                    fixture("README.md").display().to_string(),
                ),
                ("APP_ORDER_IDEMPOTENCY_SECRET", secret(ID_SECRET)),
            ],
            "APP_AUTH_JWT_PUBLIC_KEY_FILE",
        ),
        (
            "an identity provider's public key without an audience",
            vec![
                (
                    "APP_AUTH_JWT_PUBLIC_KEY_FILE",
                    fixture("rsa-public.pem").display().to_string(),
                ),
                ("APP_ORDER_IDEMPOTENCY_SECRET", secret(ID_SECRET)),
            ],
            "APP_AUTH_JWT_AUDIENCE",
        ),
    ];
    for (what, set, variable) in cases {
        let values: Vec<String> = set.iter().map(|(_, v)| v.clone()).collect();
        let (code, _, stderr) = run(set, &[]).await;
        assert_eq!(code, Some(78), "{what}: {stderr}");
        assert!(stderr.contains(variable), "{what}: {stderr}");
        for v in values.iter().filter(|v| !v.starts_with('/')) {
            assert!(
                !stderr.contains(v.as_str()),
                "{what}: the secret is printed"
            );
        }
    }

    // mint-token: a token for the customer, accepted by a service with the
    // same secret.
    let set = vec![
        ("APP_AUTH_JWT_HS256_SECRET", secret(JWT_SECRET)),
        ("APP_ORDER_IDEMPOTENCY_SECRET", secret(ID_SECRET)),
    ];
    let (code, minted, stderr) = run(
        set.clone(),
        &["mint-token", "--subject", "grace", "--ttl", "120"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(JWT_SECRET));
    let api = Api::start_on(&brokers(), &[]).await;
    let r = post_as(
        &api,
        &json!({"items": items(1)}),
        Some(&format!("Bearer {minted}")),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["customer_id"], "grace");
    api.stop().await;
    let (code, _, stderr) = run(set.clone(), &["mint-token"]).await;
    assert_eq!(code, Some(64), "no subject is a usage error: {stderr}");
    // A subject that is no customer id, and a life that is none or longer than
    // a year and a day (or does not fit in the clock), are usage errors.
    for args in [
        &["mint-token", "--subject", "grace "][..],
        &["mint-token", "--subject", "grace", "--ttl", "0"],
        &["mint-token", "--subject", "grace", "--ttl", "31622401"],
        &[
            "mint-token",
            "--subject",
            "grace",
            "--ttl",
            "18446744073709551615",
        ],
    ] {
        let (code, minted, stderr) = run(set.clone(), args).await;
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(minted.is_empty(), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
