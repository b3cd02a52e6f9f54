//! What a node releases, both ways; sizes are bounded before anything
//! else looks at them.

use super::*;

fn cell_to_pb(c: Cell) -> pb::CountCell {
    use pb::count_cell::Value as V;
    pb::CountCell {
        value: Some(match c {
            Cell::Count(n) => V::Count(n),
            Cell::Suppressed => V::Suppressed(true),
        }),
    }
}

fn cell_from_pb(c: Option<pb::CountCell>) -> Result<Cell> {
    use pb::count_cell::Value as V;
    match c.and_then(|c| c.value) {
        Some(V::Count(n)) => Ok(Cell::Count(n)),
        Some(V::Suppressed(true)) => Ok(Cell::Suppressed),
        Some(V::Suppressed(false)) | None => Err(missing("count cell")),
    }
}

fn cells_from_pb(cells: Vec<pb::CountCell>) -> Result<Vec<Cell>> {
    if cells.len() > MAX_REPEATED {
        return Err(Error::invalid("too many cells in node statistics"));
    }
    cells.into_iter().map(|c| cell_from_pb(Some(c))).collect()
}

impl From<&NodeStats> for pb::NodeStats {
    fn from(s: &NodeStats) -> Self {
        use pb::node_stats::Kind;
        let kind = match s {
            NodeStats::Count(c) => Kind::Count(pb::CountStats {
                n: Some(cell_to_pb(*c)),
            }),
            NodeStats::Summary(m) => Kind::Summary(pb::MomentStats {
                value: Some(match m {
                    Some(m) => pb::moment_stats::Value::Moments(pb::Moments {
                        n: m.n,
                        sum: m.sum,
                        sum_squares: m.sum_squares,
                    }),
                    None => pb::moment_stats::Value::Suppressed(true),
                }),
            }),
            NodeStats::Histogram { bins, below, above } => Kind::Histogram(pb::HistogramStats {
                bins: bins.iter().map(|c| cell_to_pb(*c)).collect(),
                below: Some(cell_to_pb(*below)),
                above: Some(cell_to_pb(*above)),
            }),
            NodeStats::Table {
                rows,
                columns,
                cells,
            } => Kind::Table(pb::TableStats {
                rows: *rows,
                columns: *columns,
                cells: cells.iter().map(|c| cell_to_pb(*c)).collect(),
            }),
            NodeStats::Glm(g) => Kind::Glm(pb::GlmStats {
                n: g.n,
                xtwx: g.xtwx.clone(),
                xtwz: g.xtwz.clone(),
                deviance: g.deviance,
                sum_y: g.sum_y,
                null_deviance: g.null_deviance,
            }),
            NodeStats::Cox(c) => Kind::Cox(pb::CoxStats {
                n: c.n,
                events: c.events,
                loglik: c.loglik,
                gradient: c.gradient.clone(),
                information: c.information.clone(),
            }),
            NodeStats::Survival(groups) => Kind::Survival(pb::SurvivalStats {
                groups: groups
                    .iter()
                    .map(|g| pb::SurvivalGroup {
                        value: Some(match g {
                            GroupStats::Released(c) => {
                                pb::survival_group::Value::Counts(pb::SurvivalCounts {
                                    at_risk: c.at_risk,
                                    events: c.events.clone(),
                                    censored: c.censored.clone(),
                                    open_end: c.open_end,
                                })
                            }
                            GroupStats::Suppressed => pb::survival_group::Value::Suppressed(true),
                        }),
                    })
                    .collect(),
            }),
            NodeStats::Pairs(pairs) => Kind::Pairs(pb::PairStats {
                pairs: pairs
                    .iter()
                    .map(|p| pb::PairCell {
                        value: Some(match p {
                            Some(p) => pb::pair_cell::Value::Sums(pb::PairSums {
                                n: p.n,
                                sum_x: p.sum_x,
                                sum_y: p.sum_y,
                                sum_xx: p.sum_xx,
                                sum_yy: p.sum_yy,
                                sum_xy: p.sum_xy,
                            }),
                            None => pb::pair_cell::Value::Suppressed(true),
                        }),
                    })
                    .collect(),
            }),
            NodeStats::Gbdt(g) => Kind::Gbdt(super::gbdt::stats_to_pb(g)),
            NodeStats::Performance(p) => Kind::Performance(super::performance::stats_to_pb(p)),
        };
        pb::NodeStats { kind: Some(kind) }
    }
}

impl TryFrom<pb::NodeStats> for NodeStats {
    type Error = Error;
    fn try_from(s: pb::NodeStats) -> Result<Self> {
        use pb::node_stats::Kind;
        Ok(match s.kind.ok_or_else(|| missing("statistics"))? {
            Kind::Count(c) => NodeStats::Count(cell_from_pb(c.n)?),
            Kind::Summary(m) => NodeStats::Summary(match m.value {
                Some(pb::moment_stats::Value::Moments(m)) => Some(Moments {
                    n: m.n,
                    sum: m.sum,
                    sum_squares: m.sum_squares,
                }),
                Some(pb::moment_stats::Value::Suppressed(true)) => None,
                _ => return Err(missing("moments")),
            }),
            Kind::Histogram(h) => NodeStats::Histogram {
                bins: cells_from_pb(h.bins)?,
                below: cell_from_pb(h.below)?,
                above: cell_from_pb(h.above)?,
            },
            Kind::Table(t) => NodeStats::Table {
                rows: t.rows,
                columns: t.columns,
                cells: cells_from_pb(t.cells)?,
            },
            Kind::Glm(g) => NodeStats::Glm(GlmStats {
                n: g.n,
                xtwx: bounded(g.xtwx, MAX_WIRE_VECTOR, "matrix entries")?,
                xtwz: bounded(g.xtwz, MAX_WIRE_VECTOR, "vector entries")?,
                deviance: g.deviance,
                sum_y: g.sum_y,
                null_deviance: g.null_deviance,
            }),
            Kind::Cox(c) => NodeStats::Cox(CoxStats {
                n: c.n,
                events: c.events,
                loglik: c.loglik,
                gradient: bounded(c.gradient, MAX_WIRE_VECTOR, "vector entries")?,
                information: bounded(c.information, MAX_WIRE_VECTOR, "matrix entries")?,
            }),
            Kind::Survival(s) => NodeStats::Survival(
                bounded(s.groups, MAX_REPEATED, "survival groups")?
                    .into_iter()
                    .map(|g| match g.value {
                        Some(pb::survival_group::Value::Counts(c)) => {
                            Ok(GroupStats::Released(GroupCounts {
                                at_risk: c.at_risk,
                                events: bounded(c.events, MAX_GRID_INTERVALS, "intervals")?,
                                censored: bounded(c.censored, MAX_GRID_INTERVALS, "intervals")?,
                                open_end: c.open_end,
                            }))
                        }
                        Some(pb::survival_group::Value::Suppressed(true)) => {
                            Ok(GroupStats::Suppressed)
                        }
                        _ => Err(missing("survival group")),
                    })
                    .collect::<Result<_>>()?,
            ),
            Kind::Pairs(p) => NodeStats::Pairs(
                bounded(p.pairs, MAX_REPEATED, "pairs")?
                    .into_iter()
                    .map(|p| match p.value {
                        Some(pb::pair_cell::Value::Sums(s)) => Ok(Some(PairSums {
                            n: s.n,
                            sum_x: s.sum_x,
                            sum_y: s.sum_y,
                            sum_xx: s.sum_xx,
                            sum_yy: s.sum_yy,
                            sum_xy: s.sum_xy,
                        })),
                        Some(pb::pair_cell::Value::Suppressed(true)) => Ok(None),
                        _ => Err(missing("pair sums")),
                    })
                    .collect::<Result<_>>()?,
            ),
            Kind::Gbdt(g) => NodeStats::Gbdt(super::gbdt::stats_from_pb(g)?),
            Kind::Performance(p) => NodeStats::Performance(super::performance::stats_from_pb(p)?),
        })
    }
}
