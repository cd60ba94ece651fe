//! inventory-service: see the crate documentation of `rust_eda`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rust_eda::app::run("inventory-service").await
}
