//! Bounded load through routers: a few clients paced to a total rate, counting requests that got one
//! of the expected bodies and every other outcome.

use std::time::Duration;

pub use atlantis_testkit::load::Load;

/// `rate` requests per second in total, spread over `addrs` (two clients each), accepting `bodies`.
pub fn start(addrs: &[&str], host: &str, bodies: Vec<String>, rate: u32) -> Load {
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}/")).collect();
    let workers = addrs.len() * 2;
    let every = Duration::from_secs_f64(workers as f64 / f64::from(rate));
    Load::start(&urls, host, &bodies, workers, every)
}

/// Waits (bounded) until `addr` serves `body` for the sample app.
pub async fn expect_body(addr: &str, body: &str) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    atlantis_testkit::eventually(
        Duration::from_secs(30),
        &format!("{addr} serves {body:?}"),
        || async {
            let r = http
                .get(format!("http://{addr}/"))
                .header("host", "hello.dev.apps.localhost")
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            (r.status() == 200 && r.text().await.ok()? == body).then_some(())
        },
    )
    .await;
}
