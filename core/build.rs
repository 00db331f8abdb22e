//! Generates the head's gRPC service code from Rust descriptions (tonic-build's manual
//! builder): no .proto file and no system `protoc` needed. The messages are hand-written prost
//! structs in `src/head/rpc.rs`.

fn main() {
    use tonic_build::manual::{Builder, Method, Service};
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::head::rpc::{input}"))
            .output_type(format!("crate::head::rpc::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let head = Service::builder()
        .name("Head")
        .package("flare")
        .method(method("register_node", "RegisterNode", "RegisterNodeRequest", "RegisterNodeReply"))
        .method(method("heartbeat", "Heartbeat", "HeartbeatRequest", "HeartbeatReply"))
        .build();
    Builder::new().compile(&[head]);
    println!("cargo:rerun-if-changed=build.rs");
}
