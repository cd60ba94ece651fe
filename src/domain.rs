//! The order domain, checked once at the edge: parse, don't validate.
//!
//! [`NewOrder::parse`] turns a request body into a [`NewOrder`] or into the list of
//! every field that is wrong, with a path (`items[2].quantity`) and a message a
//! client can show. Past that point an order is known to be well formed, and no
//! other code checks it again.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

/// Most items one order may have.
pub const MAX_ITEMS: usize = 100;
/// Longest id (customer or product) accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest quantity of one item.
pub const MAX_QUANTITY: u64 = 1_000_000;
/// Highest unit price. With the other limits it keeps every total finite: an
/// unbounded price let `quantity × price` overflow to infinity, which JSON writes
/// as `null`, and the event could not be read back.
pub const MAX_PRICE: f64 = 1e12;

/// An order's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    /// A new random (v4) order id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl OrderId {
    /// The id of the order that `key` creates for `customer_id`: the same for every
    /// retry of a request, on any instance, across restarts, so a repeated
    /// `order.created` names the same order and is recognised downstream. It is
    /// an HMAC under the server's [`OrderIdKey`], so nobody without that key can
    /// compute the id of another customer's order from its customer id and key.
    pub fn for_idempotency_key(
        secret: &OrderIdKey,
        customer_id: &str,
        key: &IdempotencyKey,
    ) -> Self {
        let mut mac = secret.0.clone();
        mac.update(idempotency_name(customer_id, key).as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(Uuid::new_v8(bytes))
    }

    /// The id an idempotency key gave before ids were keyed: a version 5 UUID anyone
    /// could compute. No new order gets one; the order service still looks it
    /// up, for the owner only, so that a retry of a request made before the
    /// upgrade answers with its order until the retention ends.
    pub fn unkeyed_for_idempotency_key(customer_id: &str, key: &IdempotencyKey) -> Self {
        Self(Uuid::new_v5(
            &UNKEYED_NAMESPACE,
            idempotency_name(customer_id, key).as_bytes(),
        ))
    }
}

/// Length-prefixed, so that ("a:b", "c") and ("a", "b:c") differ.
fn idempotency_name(customer_id: &str, key: &IdempotencyKey) -> String {
    format!("{}:{customer_id}:{}", customer_id.len(), key.0)
}

/// The UUID namespace of the unkeyed ids (a fixed random UUID).
const UNKEYED_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_8e2a_4b7d_4e0f_9a51_c3d2_7b86_e415);

/// Shortest idempotency secret accepted, in bytes: HMAC-SHA256's own size.
pub const MIN_SECRET_LEN: usize = 32;

/// The server's secret key of order ids made from idempotency keys
/// (`APP_ORDER_IDEMPOTENCY_SECRET`): every instance must have the same one.
#[derive(Clone)]
pub struct OrderIdKey(Hmac<Sha256>);

impl OrderIdKey {
    /// The key from `secret`, at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "at least {MIN_SECRET_LEN} bytes (this one has {}); make one with `openssl rand -hex 32`",
                secret.len()
            ));
        }
        <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for OrderIdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderIdKey(***)")
    }
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses an order id from the path, naming the field when it is not one.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(FieldError::new(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldError::new(
                "Idempotency-Key",
                "must be visible ASCII characters, without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::str::FromStr for OrderId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl std::fmt::Display for OrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    /// The product, 1 to 128 bytes.
    pub product_id: String,
    /// Units ordered, 1 to 1,000,000.
    pub quantity: u64,
    /// Price per unit, 0 to 10¹².
    pub price: f64,
}

/// A well-formed order request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// The customer, 1 to 128 bytes.
    pub customer_id: String,
    /// What is ordered, 1 to 100 lines.
    pub items: Vec<OrderItem>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is, as a path into the request (`items[0].quantity`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl NewOrder {
    /// Parses a request body, reporting every invalid field at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(object) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };

        let customer_id = id(object.get("customer_id"), "customer_id", &mut errors);

        let mut items = Vec::new();
        match object.get("items") {
            None | Some(Value::Null) => errors.push(FieldError::new("items", "is required")),
            Some(Value::Array(list)) if list.is_empty() => {
                errors.push(FieldError::new("items", "must hold at least one item"));
            }
            Some(Value::Array(list)) if list.len() > MAX_ITEMS => errors.push(FieldError::new(
                "items",
                format!("must hold at most {MAX_ITEMS} items, not {}", list.len()),
            )),
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    if let Some(item) = parse_item(item, &format!("items[{i}]"), &mut errors) {
                        items.push(item);
                    }
                }
            }
            Some(_) => errors.push(FieldError::new("items", "must be an array")),
        }

        match customer_id {
            Some(customer_id) if errors.is_empty() => Ok(Self { customer_id, items }),
            _ => Err(errors),
        }
    }

    /// The sum of quantity × price over the items.
    pub fn total(&self) -> f64 {
        total(&self.items)
    }
}

/// The sum of quantity × price, rounded to a millionth so that float noise does
/// not show up in amounts.
pub fn total(items: &[OrderItem]) -> f64 {
    let sum: f64 = items.iter().map(|i| i.quantity as f64 * i.price).sum();
    (sum * 1e6).round() / 1e6
}

/// Why `s` is no id (customer or product), or `None` when it is one. Surrounding
/// white space is not part of an id: a body's ids are trimmed before this check,
/// and anything else that names a customer (a token's claim, an API key's
/// customer) must already be trimmed, so that one customer has one spelling.
pub fn id_problem(s: &str) -> Option<String> {
    if s.trim().is_empty() {
        Some("must not be empty".into())
    } else if s.len() > MAX_ID_LEN {
        Some(format!("must be at most {MAX_ID_LEN} bytes long"))
    } else if s.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else if s.trim() != s {
        Some("must not begin or end with white space".into())
    } else {
        None
    }
}

fn id(value: Option<&Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match value {
        None | Some(Value::Null) => errors.push(FieldError::new(field, "is required")),
        Some(Value::String(s)) => match id_problem(s.trim()) {
            // Control characters are refused wherever they stand, even where
            // trimming would take them off.
            None if s.chars().any(char::is_control) => errors.push(FieldError::new(
                field,
                "must not contain control characters",
            )),
            None => return Some(s.trim().to_owned()),
            Some(problem) => errors.push(FieldError::new(field, problem)),
        },
        Some(_) => errors.push(FieldError::new(field, "must be a string")),
    }
    None
}

fn parse_item(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<OrderItem> {
    let Some(item) = value.as_object() else {
        errors.push(FieldError::new(path, "must be an object"));
        return None;
    };
    let before = errors.len();
    let product_id = id(
        item.get("product_id"),
        &format!("{path}.product_id"),
        errors,
    );

    let quantity_field = format!("{path}.quantity");
    let quantity = match item.get("quantity") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(quantity_field, "is required"));
            None
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(q) if (1..=MAX_QUANTITY).contains(&q) => Some(q),
            Some(_) => {
                errors.push(FieldError::new(
                    quantity_field,
                    format!("must be from 1 to {MAX_QUANTITY}"),
                ));
                None
            }
            None if n.as_i64().is_some() => {
                errors.push(FieldError::new(quantity_field, "must be at least 1"));
                None
            }
            None => {
                errors.push(FieldError::new(quantity_field, "must be a whole number"));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(quantity_field, "must be a whole number"));
            None
        }
    };

    let price_field = format!("{path}.price");
    let price = match item.get("price") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(price_field, "is required"));
            None
        }
        Some(Value::Number(n)) => match n.as_f64() {
            Some(p) if (0.0..=MAX_PRICE).contains(&p) => Some(p),
            _ => {
                errors.push(FieldError::new(
                    price_field,
                    format!("must be a number from 0 to {MAX_PRICE:e}"),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(price_field, "must be a number"));
            None
        }
    };

    match (product_id, quantity, price) {
        (Some(product_id), Some(quantity), Some(price)) if errors.len() == before => {
            Some(OrderItem {
                product_id,
                quantity,
                price,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        NewOrder::parse(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_order_parses() {
        let order = NewOrder::parse(&json!({
            "customer_id": "customer-123",
            "items": [
                {"product_id": "product-001", "quantity": 2, "price": 99.99},
                {"product_id": "product-002", "quantity": 1, "price": 149.99}
            ]
        }))
        .unwrap();
        assert_eq!(order.customer_id, "customer-123");
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.total(), 349.97);
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        assert_eq!(
            fields(json!({
                "customer_id": " ",
                "items": [
                    {"product_id": "", "quantity": 1.5, "price": -1},
                    {"product_id": "p", "quantity": 0, "price": "3"},
                    {"product_id": 7, "quantity": "2", "price": 1},
                    "nope"
                ]
            })),
            vec![
                "customer_id",
                "items[0].product_id",
                "items[0].quantity",
                "items[0].price",
                "items[1].quantity",
                "items[1].price",
                "items[2].product_id",
                "items[2].quantity",
                "items[3]",
            ]
        );
    }

    #[test]
    fn item_counts_are_bounded() {
        assert_eq!(
            fields(json!({"customer_id": "c", "items": []})),
            vec!["items"]
        );
        let many: Vec<_> = (0..101)
            .map(|i| json!({"product_id": format!("p{i}"), "quantity": 1, "price": 1}))
            .collect();
        assert_eq!(
            fields(json!({"customer_id": "c", "items": many})),
            vec!["items"]
        );
        assert_eq!(fields(json!({"customer_id": "c"})), vec!["items"]);
        assert_eq!(fields(json!([1, 2])), vec!["body"]);
    }

    #[test]
    fn quantities_and_ids_have_limits() {
        let f = fields(json!({"customer_id": "c", "items": [
            {"product_id": "p", "quantity": -3, "price": 1},
            {"product_id": "x".repeat(200), "quantity": 2_000_000, "price": 1}
        ]}));
        assert_eq!(
            f,
            vec![
                "items[0].quantity",
                "items[1].product_id",
                "items[1].quantity"
            ]
        );
    }

    #[test]
    fn a_total_too_large_for_json_is_refused() {
        // Found by schemathesis: 299 × 4e306 overflowed to infinity, which JSON
        // writes as null, and the order.created event could not be read back.
        let f = fields(json!({"customer_id": "c", "items": [
            {"product_id": "p", "quantity": 299, "price": 4.086926082020439e306}
        ]}));
        assert_eq!(f, vec!["items[0].price"]);
        let biggest = NewOrder::parse(&json!({"customer_id": "c", "items":
            vec![json!({"product_id": "p", "quantity": MAX_QUANTITY, "price": MAX_PRICE}); MAX_ITEMS]
        }))
        .unwrap();
        assert!(biggest.total().is_finite());
    }

    #[test]
    fn an_order_id_cannot_be_computed_without_the_servers_secret() {
        let key = IdempotencyKey::parse("checkout-cart-42").unwrap();
        let ours = OrderIdKey::new(b"the server's secret, 32 bytes at least").unwrap();
        let id = OrderId::for_idempotency_key(&ours, "customer-123", &key);
        // What an outsider can compute: the old public derivation, or the same
        // HMAC under any key they can guess.
        assert_ne!(
            id,
            OrderId::unkeyed_for_idempotency_key("customer-123", &key)
        );
        for guess in [[0u8; 32], [b'x'; 32]] {
            let theirs = OrderIdKey::new(&guess).unwrap();
            assert_ne!(
                id,
                OrderId::for_idempotency_key(&theirs, "customer-123", &key)
            );
        }
        // The id still looks like any other (a UUID, version 8, RFC variant).
        assert_eq!(id.0.get_version_num(), 8);
        assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
        // An unkeyed id keeps the value it always had (computed independently,
        // with Python's uuid.uuid5), so orders made before keying are found.
        assert_eq!(
            OrderId::unkeyed_for_idempotency_key("c-1", &IdempotencyKey::parse("retry-1").unwrap())
                .to_string(),
            "6577cfca-14ab-57fc-879e-9b42cd2f0930"
        );
        let short = OrderIdKey::new(b"too short").unwrap_err();
        assert!(short.contains("at least 32 bytes"), "{short}");
        assert_eq!(format!("{ours:?}"), "OrderIdKey(***)");
    }

    #[test]
    fn order_ids_parse_from_uuids_only() {
        assert!("not-a-uuid".parse::<OrderId>().is_err());
        let secret = OrderIdKey::new(&[7; 32]).unwrap();
        let key = IdempotencyKey::parse("retry-1").unwrap();
        let id = OrderId::for_idempotency_key(&secret, "c-1", &key);
        assert_eq!(
            id,
            OrderId::for_idempotency_key(&secret, "c-1", &key),
            "stable"
        );
        assert_ne!(
            id,
            OrderId::for_idempotency_key(&secret, "c-2", &key),
            "per customer"
        );
        assert_ne!(
            OrderId::for_idempotency_key(&secret, "a:b", &IdempotencyKey::parse("c").unwrap()),
            OrderId::for_idempotency_key(&secret, "a", &IdempotencyKey::parse("b:c").unwrap()),
        );
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        let id = OrderId::new();
        assert_eq!(id.to_string().parse::<OrderId>().unwrap(), id);
    }
}
