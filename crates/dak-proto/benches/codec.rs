//! Frame codec cost: what every message pays on each side of the socket.
//! `cargo bench -p dak-proto`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use dak_proto::{decode_client_frame, decode_server_frame, encode};
use std::hint::black_box;

fn send_frame(body: usize) -> v1::ClientFrame {
    v1::ClientFrame {
        request_id: 42,
        request: Some(Request::SendMessage(v1::SendMessage {
            message_id: vec![7; 16],
            body: vec![0x5a; body],
            ..Default::default()
        })),
    }
}

fn deliver_frame(n: usize, body: usize) -> v1::ServerFrame {
    v1::ServerFrame {
        request_id: 0,
        body: Some(Body::Deliver(v1::Deliver {
            envelopes: (0..n as u64)
                .map(|seq| v1::Envelope {
                    seq,
                    message_id: vec![7; 16],
                    sender_phone: "+919800000001".into(),
                    sender_device: 1,
                    server_time_ms: 1_700_000_000_000,
                    body: vec![0x5a; body],
                })
                .collect(),
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [256usize, 4096] {
        let frame = send_frame(size);
        let bytes = encode(&frame);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode SendMessage {size} B"), |b| {
            b.iter(|| encode(black_box(&frame)))
        });
        g.bench_function(format!("decode+validate SendMessage {size} B"), |b| {
            b.iter(|| decode_client_frame(black_box(&bytes)).expect("valid"))
        });
    }
    let deliver = deliver_frame(64, 256);
    let bytes = encode(&deliver);
    g.throughput(Throughput::Elements(64));
    g.bench_function("encode Deliver 64 x 256 B", |b| {
        b.iter(|| encode(black_box(&deliver)))
    });
    g.bench_function("decode Deliver 64 x 256 B", |b| {
        b.iter(|| decode_server_frame(black_box(&bytes)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
