//! The parts of a model that only inspection and reports read: quantization parameters,
//! metadata, signatures, description.
//!
//! Read from the flatbuffer that [`Model::parse`] verified and turned into our own types here,
//! so that generated names stay inside the model reader. Nothing here is trusted further
//! than the verifier checked it: parameter vectors may disagree with the shape, metadata may
//! name a missing buffer; callers check what they use.

use serde::Serialize;

use super::Model;

/// A tensor's quantization parameters, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantization {
    /// Scales: one (per-tensor) or one per channel along `axis`.
    pub scale: Vec<f32>,
    /// Zero points, as many as scales (some writers leave them out: then empty).
    pub zero_point: Vec<i64>,
    /// The channel axis (`quantized_dimension`), meaningful with several scales.
    pub axis: i32,
    /// Calibration minimum(s), when recorded.
    pub min: Vec<f32>,
    /// Calibration maximum(s), when recorded.
    pub max: Vec<f32>,
    /// Name of the `details` union member (e.g. custom quantization), if any.
    pub details: Option<String>,
    /// Blockwise parameters: (scale tensor index, block size), checked when the model was
    /// read.
    pub blockwise: Option<(usize, usize)>,
}

impl Quantization {
    /// One scale per channel rather than one for the tensor.
    pub fn per_channel(&self) -> bool {
        self.scale.len() > 1
    }
}

/// One entry of the model's `metadata` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    /// Entry name, e.g. `min_runtime_version`.
    pub name: String,
    /// Buffer holding the value.
    pub buffer: u32,
    /// Bytes of the value (0 when the buffer is missing or empty).
    pub bytes: u64,
    /// The value as text, when it is short printable UTF-8 (trailing NULs removed).
    pub text: Option<String>,
}

/// A tensor named by a signature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignatureTensor {
    /// The signature's name for it (the key callers use).
    pub name: String,
    /// Tensor index in the signature's subgraph.
    pub tensor: u32,
}

/// One signature (entry point) of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signature {
    /// Signature key, e.g. `serving_default`.
    pub key: String,
    /// Subgraph that runs it.
    pub subgraph: usize,
    /// Inputs, in stored order.
    pub inputs: Vec<SignatureTensor>,
    /// Outputs, in stored order.
    pub outputs: Vec<SignatureTensor>,
}

/// Everything of [`details`] in one value.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// Schema version.
    pub version: u32,
    /// Model description, if any.
    pub description: Option<String>,
    /// Metadata entries in stored order.
    pub metadata: Vec<Metadata>,
    /// Signatures in stored order.
    pub signatures: Vec<Signature>,
    /// Quantization parameters per subgraph and tensor (`None`: no scales and no details).
    pub quantization: Vec<Vec<Option<Quantization>>>,
}

impl Details {
    /// The quantization of subgraph `s` tensor `t`, if it has any.
    pub fn quantization(&self, s: usize, t: usize) -> Option<&Quantization> {
        self.quantization.get(s)?.get(t)?.as_ref()
    }
}

/// Longest metadata value shown as text.
const TEXT_LIMIT: usize = 64;

fn as_text(bytes: &[u8]) -> Option<String> {
    let trimmed = match bytes.iter().rposition(|&b| b != 0) {
        Some(end) => &bytes[..=end],
        None => return None,
    };
    let s = std::str::from_utf8(trimmed).ok()?;
    (s.len() <= TEXT_LIMIT && s.chars().all(|c| !c.is_control())).then(|| s.to_owned())
}

/// Reads the description, metadata, signatures and quantization parameters of `model`.
pub fn details(model: &Model<'_>) -> Details {
    let root = model.root();
    let metadata = root
        .metadata()
        .into_iter()
        .flatten()
        .map(|m| {
            let data = model.buffer_data(m.buffer());
            Metadata {
                name: m.name().unwrap_or_default().to_owned(),
                buffer: m.buffer(),
                bytes: data.len() as u64,
                text: as_text(data),
            }
        })
        .collect();
    let tensors = |v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<_>>>| {
        v.into_iter()
            .flatten()
            .map(|m: tflq_schema::TensorMap<'_>| SignatureTensor {
                name: m.name().unwrap_or_default().to_owned(),
                tensor: m.tensor_index(),
            })
            .collect()
    };
    let signatures = root
        .signature_defs()
        .into_iter()
        .flatten()
        .map(|s| Signature {
            key: s.signature_key().unwrap_or_default().to_owned(),
            subgraph: s.subgraph_index() as usize,
            inputs: tensors(s.inputs()),
            outputs: tensors(s.outputs()),
        })
        .collect();
    let quantization = root
        .subgraphs()
        .into_iter()
        .flatten()
        .map(|sg| {
            sg.tensors()
                .into_iter()
                .flatten()
                .map(|t| {
                    let q = t.quantization()?;
                    let scale: Vec<f32> = q.scale().map(|v| v.iter().collect()).unwrap_or_default();
                    let details = q.details_type().variant_name().filter(|n| *n != "NONE");
                    if scale.is_empty() && details.is_none() {
                        return None;
                    }
                    Some(Quantization {
                        scale,
                        zero_point: q
                            .zero_point()
                            .map(|v| v.iter().collect())
                            .unwrap_or_default(),
                        axis: q.quantized_dimension(),
                        min: q.min().map(|v| v.iter().collect()).unwrap_or_default(),
                        max: q.max().map(|v| v.iter().collect()).unwrap_or_default(),
                        details: details.map(str::to_owned),
                        blockwise: q.details_as_blockwise_quantization().and_then(|b| {
                            Some((
                                usize::try_from(b.scales()).ok()?,
                                usize::try_from(b.block_size()).ok()?,
                            ))
                        }),
                    })
                })
                .collect()
        })
        .collect();
    Details {
        version: root.version(),
        description: root.description().map(str::to_owned),
        metadata,
        signatures,
        quantization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_are_trimmed_and_binary_ones_left_out() {
        assert_eq!(as_text(b"1.14.0\0\0"), Some("1.14.0".to_owned()));
        assert_eq!(as_text(b"\0\0"), None);
        assert_eq!(as_text(b"ab\x01cd"), None);
        assert_eq!(as_text(&[0xff, 0xfe]), None);
        assert_eq!(as_text(&[b'a'; 100]), None);
    }
}
