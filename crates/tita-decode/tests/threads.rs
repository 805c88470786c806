//! What callers rely on across threads.

#[test]
fn pipelines_and_samplers_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<tita_decode::Pipeline<burn::backend::Flex>>();
    send_sync::<tita_decode::Tita<'static, burn::backend::Flex>>();
    send_sync::<tita_decode::Request>();
    send_sync::<tita_decode::GenerationConfig>();
}
