//! The OTLP receiver's decoding: the wire walk that prices a request before it is decoded,
//! then (within budget) the protobuf decode, the spans built from it and their cut to what
//! the lifecycle reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Small, so that the budget's refusal is reached too.
const BUDGET: usize = 1 << 20;

fuzz_target!(|wire: &[u8]| {
    let Ok(cost) = tracer::receiver::budget::cost(wire, BUDGET) else {
        return;
    };
    assert!(cost.bytes <= BUDGET);
    if let Ok(request) = ExportTraceServiceRequest::decode(wire) {
        let spans = tracer::receiver::spans_from_otlp(&request);
        assert!(spans.len() <= cost.spans, "every span decoded was counted");
        for span in spans {
            let _ = tracer::lifecycle::minimal(span);
        }
    }
});
