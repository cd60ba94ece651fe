//! order-service. Configuration: `APP_*` variables (see README); `--config FILE`
//! reads them from an env file; `create-topics` creates the topics and exits.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rust_eda::app::main::<rust_eda::services::order::OrderService>().await
}
