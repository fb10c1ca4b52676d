//! Stock tools work with no proto files: a generic client that learns the API from the
//! server's reflection service (as grpcurl does), builds messages from the descriptors it got,
//! and submits and polls a saga with them. No compiled-in sagalog stubs are used here. Also the
//! standard health service, as grpc_health_probe and Kubernetes probes call it.

use crate::api_support;

use std::time::Duration;

use api_support::{CLIENT_TOKEN, CONFIG, start};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, Value};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Encodes and decodes messages known only by their runtime descriptors.
struct DynamicCodec(MessageDescriptor);

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }
    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.0.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let bytes = item.encode_to_vec();
        dst.put_slice(&bytes);
        Ok(())
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

async fn reflect(channel: Channel, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel);
    let outbound =
        tokio_stream::iter(vec![ServerReflectionRequest { host: String::new(), message_request: Some(request) }]);
    let mut inbound = client.server_reflection_info(outbound).await.unwrap().into_inner();
    let reply: ServerReflectionResponse = inbound.next().await.unwrap().unwrap();
    reply.message_response.unwrap()
}

/// Calls `/service/method` with a message built from descriptors.
async fn call(
    channel: Channel,
    pool: &DescriptorPool,
    service: &str,
    method: &str,
    msg: DynamicMessage,
) -> DynamicMessage {
    let method_desc = pool.get_service_by_name(service).unwrap().methods().find(|m| m.name() == method).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = Request::new(msg);
    request.metadata_mut().insert("authorization", format!("Bearer {CLIENT_TOKEN}").parse().unwrap());
    let path = format!("/{service}/{method}").parse().unwrap();
    grpc.unary(request, path, DynamicCodec(method_desc.output())).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_client_submits_a_saga_using_only_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), CONFIG).await;
    let channel = api_support::channel(server.addr).await;

    // What is served.
    let MessageResponse::ListServicesResponse(list) =
        reflect(channel.clone(), MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list")
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["sagalog.v1.Sagas", "sagalog.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.contains(&expected), "{expected} missing from {services:?}");
    }

    // The descriptors of the Sagas service, from the server.
    let MessageResponse::FileDescriptorResponse(files) =
        reflect(channel.clone(), MessageRequest::FileContainingSymbol("sagalog.v1.Sagas".into())).await
    else {
        panic!("expected file descriptors")
    };
    let set = prost_types::FileDescriptorSet {
        file: files
            .file_descriptor_proto
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
            .collect(),
    };
    let pool = DescriptorPool::from_file_descriptor_set(set).unwrap();

    // Build a SubmitRequest by field name, as grpcurl does from JSON.
    let submit_desc = pool.get_message_by_name("sagalog.v1.SubmitRequest").unwrap();
    let step_desc = pool.get_message_by_name("sagalog.v1.Step").unwrap();
    let value_desc = pool.get_message_by_name("sagalog.v1.Value").unwrap();
    let typed = |field: &str, v: Value| {
        let mut m = DynamicMessage::new(value_desc.clone());
        m.set_field_by_name(field, v);
        Value::Message(m)
    };
    let step = |action: &str, params: Vec<(&str, Value)>| {
        let mut m = DynamicMessage::new(step_desc.clone());
        m.set_field_by_name("action", Value::String(action.into()));
        let map = params.into_iter().map(|(k, v)| (MapKey::String(k.into()), v)).collect();
        m.set_field_by_name("params", Value::Map(map));
        Value::Message(m)
    };
    let mut submit = DynamicMessage::new(submit_desc);
    submit.set_field_by_name("saga_id", Value::String("via-reflection".into()));
    submit.set_field_by_name(
        "steps",
        Value::List(vec![
            step(
                "record_execution",
                vec![("run_id", typed("text", Value::String("r-refl".into()))), ("rows", typed("int", Value::I64(7)))],
            ),
            step(
                "write_artifact",
                vec![
                    ("run_id", typed("text", Value::String("r-refl".into()))),
                    ("report", typed("text", Value::String("{}".into()))),
                ],
            ),
        ]),
    );
    let reply = call(channel.clone(), &pool, "sagalog.v1.Sagas", "Submit", submit).await;
    assert_eq!(reply.get_field_by_name("created").unwrap().as_bool(), Some(true));

    // Poll Get until the status enum reads COMPLETED (looked up by name, not by number).
    let completed = pool.get_enum_by_name("sagalog.v1.SagaStatus").unwrap().get_value_by_name("COMPLETED").unwrap();
    let get_desc = pool.get_message_by_name("sagalog.v1.GetRequest").unwrap();
    let mut status = 0;
    for _ in 0..500 {
        let mut get = DynamicMessage::new(get_desc.clone());
        get.set_field_by_name("saga_id", Value::String("via-reflection".into()));
        let saga = call(channel.clone(), &pool, "sagalog.v1.Sagas", "Get", get).await;
        status = saga.get_field_by_name("status").unwrap().as_enum_number().unwrap();
        if status == completed.number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, completed.number());
    assert!(dir.path().join("data/artifacts/runs/r-refl.json").exists());

    // The standard health service answers for the whole server and per service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "sagalog.v1.Sagas"] {
        let reply =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    server.shutdown().await.unwrap();
}
