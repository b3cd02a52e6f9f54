//! Checks of the tensors a model carries (initializers and `Constant`
//! values): data inside the file, a numeric type, and as many values as
//! the dimensions say, so tract never reads a file or trusts a length.

use plexus_core::{Error, Result};
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::TensorProto;

/// The name of an ONNX element type, as messages show it.
pub(crate) fn type_name(elem_type: i32) -> String {
    match DataType::try_from(elem_type) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(t) => t.as_str_name().to_lowercase(),
        Err(_) => format!("an unknown type ({elem_type})"),
    }
}

/// Bytes of one element of the types a model's tensors may have; `None`
/// for the rest (strings, complex numbers, 4- and 8-bit floats, and
/// unsigned 32- and 64-bit integers, which tract reads from other fields
/// than the ONNX specification puts them in).
fn element_bytes(t: DataType) -> Option<usize> {
    match t {
        DataType::Bool | DataType::Int8 | DataType::Uint8 => Some(1),
        DataType::Int16 | DataType::Uint16 | DataType::Float16 => Some(2),
        DataType::Int32 | DataType::Float => Some(4),
        DataType::Int64 | DataType::Double => Some(8),
        _ => None,
    }
}

/// Whether a model may compute in this type (the target of a `Cast`).
pub(crate) fn is_numeric(elem_type: i32) -> bool {
    DataType::try_from(elem_type).is_ok_and(|t| element_bytes(t).is_some())
}

/// Checks one tensor; `what` names it for messages (`initializer "w"`).
pub(crate) fn check(t: &TensorProto, what: &str) -> Result<()> {
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(Error::policy(format!(
            "{what} keeps its data in an external file, and a model may not read files in a node; \
             save the model with its weights inside the file (onnx.save_model(model, path, \
             save_as_external_data=False))"
        )));
    }
    if t.segment.is_some() {
        return Err(Error::invalid(format!(
            "{what} is split into segments; save the model with each tensor whole"
        )));
    }
    let Some(size) = DataType::try_from(t.data_type).ok().and_then(element_bytes) else {
        return Err(Error::invalid(format!(
            "{what} is of type {}, which a Plexus model may not carry; a model computes on \
             numbers only (float, integer or bool tensors)",
            type_name(t.data_type)
        )));
    };
    let mut count: usize = 1;
    for &d in &t.dims {
        count = usize::try_from(d)
            .ok()
            .and_then(|d| count.checked_mul(d))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{what} has impossible dimensions {:?}; re-export the model",
                    t.dims
                ))
            })?;
    }
    let stored = if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(size) {
            usize::MAX
        } else {
            t.raw_data.len() / size
        }
    } else {
        match DataType::try_from(t.data_type) {
            Ok(DataType::Float) => t.float_data.len(),
            Ok(DataType::Double) => t.double_data.len(),
            Ok(DataType::Int64) => t.int64_data.len(),
            _ => t.int32_data.len(),
        }
    };
    if stored != count {
        return Err(Error::invalid(format!(
            "{what} has dimensions {:?} but its data does not hold that many values; the file is \
             damaged or was not written by an ONNX exporter: re-export the model",
            t.dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(dims: Vec<i64>, data: Vec<f32>) -> TensorProto {
        TensorProto {
            dims,
            data_type: DataType::Float as i32,
            float_data: data,
            ..Default::default()
        }
    }

    #[test]
    fn a_tensor_holding_what_its_dimensions_say_passes() {
        check(&floats(vec![2, 1], vec![1.0, 2.0]), "w").unwrap();
        let raw = TensorProto {
            dims: vec![3],
            data_type: DataType::Int64 as i32,
            raw_data: vec![0; 24],
            ..Default::default()
        };
        check(&raw, "w").unwrap();
    }

    #[test]
    fn a_length_that_does_not_match_the_dimensions_is_refused() {
        let e = check(&floats(vec![1_000_000_000], vec![]), "initializer \"w\"").unwrap_err();
        assert!(
            e.message
                .contains("initializer \"w\" has dimensions [1000000000]"),
            "{e}"
        );
        let e = check(&floats(vec![1 << 40, 1 << 40], vec![1.0]), "w").unwrap_err();
        assert!(e.message.contains("impossible dimensions"), "{e}");
        let e = check(&floats(vec![-1], vec![1.0]), "w").unwrap_err();
        assert!(e.message.contains("impossible dimensions"), "{e}");
    }

    #[test]
    fn strings_are_refused() {
        let t = TensorProto {
            dims: vec![1],
            data_type: DataType::String as i32,
            raw_data: vec![1, 2, 3],
            ..Default::default()
        };
        let e = check(&t, "initializer \"s\"").unwrap_err();
        assert!(e.message.contains("is of type string"), "{e}");
    }
}
