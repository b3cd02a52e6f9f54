//! Model validation on the wire: the analysis, the model a round carries,
//! and a node's pieces of the public grid.

use plexus_core::models::artefact::{ModelArtefact, ModelFormat, ModelSpec, MAX_MODEL_BYTES};
use plexus_core::models::performance::{
    GroupCounts, PerformanceStats, ScoreSegments, GRID, MAX_GROUPS, MAX_THRESHOLDS,
};

use super::*;

/// The largest message that carries a model (a registration, or a job of a
/// `model_performance`): the largest model file and room for the rest.
/// gRPC's default limit of 4 MiB holds for every other message.
pub const MAX_MODEL_MESSAGE: usize = MAX_MODEL_BYTES + (1 << 20);

/// Most inputs a model may declare.
pub const MAX_MODEL_INPUTS: usize = 4096;

pub(super) fn analysis_to_pb(a: &Analysis) -> Option<pb::ModelPerformanceAnalysis> {
    let Analysis::ModelPerformance {
        model,
        model_hash,
        inputs,
        outcome,
        subgroups,
        thresholds,
        calibration_bins,
    } = a
    else {
        return None;
    };
    Some(pb::ModelPerformanceAnalysis {
        model: model.clone(),
        model_hash: model_hash.clone(),
        inputs: inputs.clone(),
        outcome: outcome.clone(),
        subgroups: subgroups.clone(),
        thresholds: thresholds.clone(),
        calibration_bins: *calibration_bins,
    })
}

pub(super) fn analysis_from_pb(a: pb::ModelPerformanceAnalysis) -> Result<Analysis> {
    Ok(Analysis::ModelPerformance {
        model: a.model,
        model_hash: a.model_hash,
        inputs: bounded(a.inputs, MAX_MODEL_INPUTS, "model inputs")?,
        outcome: a.outcome,
        subgroups: bounded(a.subgroups, MAX_GROUPS, "subgroups")?,
        thresholds: bounded(a.thresholds, MAX_THRESHOLDS, "thresholds")?,
        calibration_bins: a.calibration_bins,
    })
}

pub fn spec_to_pb(s: &ModelSpec) -> pb::ModelSpec {
    pb::ModelSpec {
        name: s.name.clone(),
        format: s.format.as_str().into(),
        inputs: s.inputs.clone(),
        output: s.output.clone(),
        source: s.source.clone(),
    }
}

pub fn spec_from_pb(s: pb::ModelSpec) -> Result<ModelSpec> {
    Ok(ModelSpec {
        format: match s.format.as_str() {
            "onnx" => ModelFormat::Onnx,
            "plexus" => ModelFormat::Plexus,
            other => {
                return Err(Error::invalid(format!(
                    "model format \"{other}\" is not one Plexus runs (onnx, plexus)"
                )))
            }
        },
        name: s.name,
        inputs: bounded(s.inputs, MAX_MODEL_INPUTS, "model inputs")?,
        output: s.output,
        source: s.source,
    })
}

pub fn artefact_to_pb(m: &ModelArtefact) -> pb::ModelArtefact {
    pb::ModelArtefact {
        spec: Some(spec_to_pb(&m.spec)),
        file: m.bytes.clone(),
    }
}

pub fn artefact_from_pb(m: pb::ModelArtefact) -> Result<ModelArtefact> {
    if m.file.len() > MAX_MODEL_BYTES {
        return Err(Error::invalid(format!(
            "the model file is {} bytes, over the limit of {MAX_MODEL_BYTES}",
            m.file.len()
        )));
    }
    Ok(ModelArtefact {
        spec: spec_from_pb(m.spec.ok_or_else(|| missing("model spec"))?)?,
        bytes: m.file,
    })
}

pub(super) fn stats_to_pb(s: &PerformanceStats) -> pb::PerformanceStats {
    pb::PerformanceStats {
        counts: s
            .counts
            .iter()
            .map(|c| pb::PerformanceGroupCounts {
                n: c.n,
                positives: c.positives,
                segments: Some(pb::ScoreSegments {
                    first: c.segments.first,
                    lows: c.segments.lows.clone(),
                    ends: c.segments.ends.clone(),
                    positives: c.segments.positives.clone(),
                    negatives: c.segments.negatives.clone(),
                    sum_p: c.segments.sum_p.clone(),
                    tied: c.segments.tied.clone(),
                }),
            })
            .collect(),
    }
}

pub(super) fn stats_from_pb(s: pb::PerformanceStats) -> Result<PerformanceStats> {
    let grid = GRID as usize;
    let counts = bounded(s.counts, MAX_GROUPS, "groups")?
        .into_iter()
        .map(|c| {
            let seg = c.segments.unwrap_or_default();
            Ok(GroupCounts {
                n: c.n,
                positives: c.positives,
                segments: ScoreSegments {
                    first: seg.first,
                    lows: bounded(seg.lows, grid, "segments")?,
                    ends: bounded(seg.ends, grid, "segments")?,
                    positives: bounded(seg.positives, grid, "segments")?,
                    negatives: bounded(seg.negatives, grid, "segments")?,
                    sum_p: bounded(seg.sum_p, grid, "segments")?,
                    tied: bounded(seg.tied, grid, "segments")?,
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PerformanceStats { counts })
}
