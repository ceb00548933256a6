//! TensorFlow Lite FlatBuffers schema bindings for tflq.
//!
//! This crate holds `schema/tflite.fbs`, tflq's own statement of the
//! TensorFlow Lite model file layout (the TensorFlow Lite schema by The
//! TensorFlow Authors, Apache-2.0, revision 3d: buffers with `offset`/`size`
//! and external buffers), and the Rust code that `flatc` generates from it,
//! object API included. Everything in namespace `tflite` is re-exported at the
//! crate root: the zero-copy readers (`Model`, `Tensor`, ...), their builders
//! and `*Args`, the owned object-API types (`ModelT`, `TensorT`, ...), the
//! enums and unions, and the root helpers (`root_as_model`,
//! `finish_model_buffer`, `MODEL_IDENTIFIER`, ...).
//!
//! `src/tflite_generated.rs` is generated; do not edit it. After changing
//! `tflite.fbs`, run `schema/regenerate.sh` (pinned flatc 25.12.19);
//! `schema/regenerate.sh --check` fails if the committed file is stale.

extern crate alloc;

// Generated code: keep rustfmt and lints out of it. `unsafe_code` is denied
// workspace-wide; the generated accessors need it, so it is allowed here only.
#[rustfmt::skip]
#[allow(
    clippy::all,
    dead_code,
    deprecated,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unsafe_code
)]
mod tflite_generated;

pub use tflite_generated::tflite::*;

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::FlatBufferBuilder;

    #[test]
    fn model_with_buffer_round_trips_through_object_api() {
        let model = ModelT {
            version: 3,
            description: Some("tflq schema test".to_owned()),
            buffers: Some(vec![
                BufferT::default(),
                BufferT {
                    data: Some(vec![1, 2, 3, 4, 5]),
                    offset: 0,
                    size: 0,
                },
                BufferT {
                    data: None,
                    offset: 4096,
                    size: 64,
                },
            ]),
            ..ModelT::default()
        };

        let mut fbb = FlatBufferBuilder::new();
        let root = model.pack(&mut fbb);
        finish_model_buffer(&mut fbb, root);
        let bytes = fbb.finished_data();

        assert!(model_buffer_has_identifier(bytes));
        assert_eq!(&bytes[4..8], MODEL_IDENTIFIER.as_bytes());

        let read = root_as_model(bytes).expect("valid model");
        assert_eq!(read.version(), 3);
        assert_eq!(read.description(), Some("tflq schema test"));
        let buffers = read.buffers().expect("buffers present");
        assert_eq!(buffers.len(), 3);
        assert!(buffers.get(0).data().is_none());
        assert_eq!(
            buffers.get(1).data().map(|d| d.bytes()),
            Some(&[1u8, 2, 3, 4, 5][..])
        );
        assert_eq!((buffers.get(1).offset(), buffers.get(1).size()), (0, 0));
        assert!(buffers.get(2).data().is_none());
        assert_eq!((buffers.get(2).offset(), buffers.get(2).size()), (4096, 64));

        let opts = flatbuffers::VerifierOptions::default();
        let again = root_as_model_with_opts(&opts, bytes).expect("valid model");
        assert_eq!(again.unpack(), model);
    }
}
