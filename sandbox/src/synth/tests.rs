use std::fs::{self, File};

use super::*;
use datafusion::arrow::array::RecordBatchReader;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

fn spec(name: &str, n: usize, seed: u64) -> SiteSpec {
    SiteSpec {
        name: name.to_string(),
        patients: n,
        seed,
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn corr(xs: &[f64], ys: &[f64]) -> f64 {
    let (mx, my) = (mean(xs), mean(ys));
    let mut sxy = 0.0;
    let mut sxx = 0.0;
    let mut syy = 0.0;
    for (x, y) in xs.iter().zip(ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

fn share(ps: &[Patient], f: impl Fn(&Patient) -> bool) -> f64 {
    ps.iter().filter(|p| f(p)).count() as f64 / ps.len() as f64
}

/// Kaplan–Meier probability of death by `days`.
fn km_mortality(ps: &[Patient], days: i64) -> f64 {
    let mut times: Vec<(i64, bool)> = ps.iter().map(|p| (p.followup_days, p.death)).collect();
    times.sort_unstable();
    let mut at_risk = times.len() as f64;
    let mut surv = 1.0;
    let mut i = 0;
    while i < times.len() && times[i].0 <= days {
        let t = times[i].0;
        let (mut d, mut n) = (0.0, 0.0);
        while i < times.len() && times[i].0 == t {
            if times[i].1 {
                d += 1.0;
            }
            n += 1.0;
            i += 1;
        }
        surv *= 1.0 - d / at_risk;
        at_risk -= n;
    }
    1.0 - surv
}

#[test]
fn synth_is_deterministic() {
    let a = generate_site(&spec("hospital-a", 500, 7));
    let b = generate_site(&spec("hospital-a", 500, 7));
    assert_eq!(a, b);
    let c = generate_site(&spec("hospital-a", 500, 8));
    assert_ne!(a.patients, c.patients);
    assert_eq!(demo_sites(200, 1), demo_sites(200, 1));
    // A longer run starts with the same patients.
    let longer = generate_site(&spec("hospital-a", 800, 7));
    assert_eq!(&longer.patients[..500], &a.patients[..]);
}

#[test]
fn synth_demo_sites_ids_and_mix() {
    let sites = demo_sites(20_000, 42);
    let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, DEMO_SITE_NAMES);
    let mut all = std::collections::HashSet::new();
    for (site, letter) in sites.iter().zip(["A-", "B-", "C-"]) {
        assert_eq!(site.patients.len(), 20_000);
        assert_eq!(site.patients[0].patient_id, format!("{letter}000001"));
        for p in &site.patients {
            assert!(p.patient_id.starts_with(letter));
            assert!(all.insert(p.patient_id.clone()), "duplicate id");
        }
    }
    let mean_age = |s: &Site| mean(&s.patients.iter().map(|p| p.age as f64).collect::<Vec<_>>());
    let current = |s: &Site| share(&s.patients, |p| p.smoking == "current");
    assert!(mean_age(&sites[1]) > mean_age(&sites[0]) + 2.0);
    assert!(current(&sites[2]) > current(&sites[0]) + 0.05);
}

#[test]
fn synth_plausible_marginals() {
    let site = generate_site(&spec("hospital-a", 20_000, 2024));
    let ps = &site.patients;
    let ages: Vec<f64> = ps.iter().map(|p| p.age as f64).collect();
    let mean_age = mean(&ages);
    assert!((60.0..75.0).contains(&mean_age), "mean age {mean_age}");
    assert!(ps.iter().all(|p| (40..=95).contains(&p.age)));

    let male = share(ps, |p| p.sex == "M");
    assert!((0.61..0.69).contains(&male), "male {male}");
    assert!(ps.iter().all(|p| p.sex == "M" || p.sex == "F"));

    let death = share(ps, |p| p.death);
    assert!((0.1..0.45).contains(&death), "death share {death}");
    let m5 = km_mortality(ps, 1826);
    assert!((0.18..0.32).contains(&m5), "5-year mortality {m5}");

    let miss_bmi = share(ps, |p| p.bmi.is_none());
    let miss_sbp = share(ps, |p| p.sbp.is_none());
    let miss_diam = share(ps, |p| p.aaa_diameter.is_none());
    assert!((0.02..0.04).contains(&miss_bmi), "bmi missing {miss_bmi}");
    assert!((0.01..0.03).contains(&miss_sbp), "sbp missing {miss_sbp}");
    assert!(
        (0.004..0.02).contains(&miss_diam),
        "diameter missing {miss_diam}"
    );

    let (a, s): (Vec<f64>, Vec<f64>) = ps
        .iter()
        .filter_map(|p| p.sbp.map(|s| (p.age as f64, s)))
        .unzip();
    let r = corr(&a, &s);
    assert!(r > 0.1, "age–sbp correlation {r}");
    assert!(s
        .iter()
        .all(|v| (80.0..=230.0).contains(v) && v.fract() == 0.0));

    let bmis: Vec<f64> = ps.iter().filter_map(|p| p.bmi).collect();
    let mb = mean(&bmis);
    assert!((26.5..28.5).contains(&mb), "bmi mean {mb}");
    assert!(bmis.iter().all(|b| (15.0..=55.0).contains(b)));

    let diams: Vec<f64> = ps.iter().filter_map(|p| p.aaa_diameter).collect();
    let md = mean(&diams);
    assert!((44.0..52.0).contains(&md), "diameter mean {md}");
    let in_range =
        diams.iter().filter(|d| (30.0..=80.0).contains(*d)).count() as f64 / diams.len() as f64;
    assert!(in_range > 0.9, "diameters in 30..80: {in_range}");

    let dm = share(ps, |p| p.diabetes);
    assert!((0.15..0.25).contains(&dm), "diabetes {dm}");
    let never = share(ps, |p| p.smoking == "never");
    let former = share(ps, |p| p.smoking == "former");
    let current = share(ps, |p| p.smoking == "current");
    assert!((0.28..0.42).contains(&never), "never {never}");
    assert!((0.38..0.52).contains(&former), "former {former}");
    assert!((0.15..0.25).contains(&current), "current {current}");

    let end = end_of_followup();
    for p in ps {
        assert!(p.inclusion_date >= first_inclusion() && p.inclusion_date <= last_inclusion());
        assert!(p.followup_days >= 1);
        assert!(p.followup_days <= (end - p.inclusion_date).num_days());
    }
}

#[test]
fn synth_consent_shares() {
    let site = generate_site(&spec("hospital-a", 20_000, 99));
    let n = site.patients.len() as f64;
    let missing = 1.0 - site.consent.len() as f64 / n;
    assert!((0.001..0.012).contains(&missing), "no consent {missing}");
    let opt = site.opt_out.len() as f64 / n;
    assert!((0.005..0.016).contains(&opt), "opt-out {opt}");
    let c = &site.consent;
    let sh = |code: &str| c.iter().filter(|r| r.purposes == code).count() as f64 / c.len() as f64;
    assert!((0.67..0.73).contains(&sh("HMB")));
    assert!((0.13..0.17).contains(&sh("GRU")));
    assert!((0.065..0.095).contains(&sh("DS:MONDO:0005160")));
    assert!((0.03..0.05).contains(&sh("HMB;NPU")));
    assert!((0.02..0.04).contains(&sh("DS:MONDO:0004995")));
    let withdrawn: Vec<&ConsentRecord> = c.iter().filter(|r| r.withdrawn_at.is_some()).collect();
    let w = withdrawn.len() as f64 / c.len() as f64;
    assert!((0.02..0.04).contains(&w), "withdrawn {w}");
    for r in withdrawn {
        let at = r.withdrawn_at.unwrap();
        assert!(at > r.valid_from && at <= last_withdrawal());
    }
    let by_id: std::collections::HashMap<&str, &Patient> = site
        .patients
        .iter()
        .map(|p| (p.patient_id.as_str(), p))
        .collect();
    for r in c {
        assert_eq!(by_id[r.patient_id.as_str()].inclusion_date, r.valid_from);
    }
    for id in &site.opt_out {
        assert!(by_id.contains_key(id.as_str()));
    }
}

#[test]
fn synth_node_columns_match_schema() {
    let schema = patient_schema();
    let cols = node_columns();
    let dict = plexus_core::Dictionary::cardiovascular();
    let mut names: Vec<&str> = cols.iter().map(|(v, _)| *v).collect();
    names.sort();
    let mut want: Vec<&str> = dict.variables.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(
        names, want,
        "every dictionary variable is in the synthetic file"
    );
    for (_, local) in cols {
        assert!(schema.field_with_name(local).is_ok(), "{local}");
    }
    assert_eq!(id_prefix("hospital-a"), "A");
    assert_eq!(id_prefix("---"), "S");
}

/// Same column names and types, treating Utf8View as Utf8 and ignoring
/// nullability.
fn assert_same_columns(got: &Schema, want: &Schema) {
    let norm = |t: &DataType| match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        t => t.clone(),
    };
    assert_eq!(got.fields().len(), want.fields().len());
    for (g, w) in got.fields().iter().zip(want.fields()) {
        assert_eq!(g.name(), w.name());
        assert_eq!(norm(g.data_type()), norm(w.data_type()), "{}", w.name());
    }
}

#[tokio::test]
async fn synth_round_trip_parquet_and_csv() -> Result<()> {
    let site = generate_site(&spec("hospital-b", 70_000, 5));
    let tmp = tempfile::tempdir()?;
    let ctx = SessionContext::new();

    let pq = write_site(&site, &tmp.path().join("pq"), DataFormat::Parquet)?;
    assert!(pq.data.ends_with("patients.parquet"));
    let df = ctx
        .read_parquet(pq.data.to_str().unwrap(), ParquetReadOptions::default())
        .await?;
    // DataFusion reads strings as Utf8View; the file itself holds Utf8.
    assert_same_columns(df.schema().as_arrow(), &patient_schema());
    assert_eq!(df.count().await?, 70_000);
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&pq.data)?)?
        .with_batch_size(BATCH_ROWS)
        .build()?;
    assert_eq!(reader.schema(), patient_schema());
    let mut rows = 0;
    for batch in reader {
        let batch = batch?;
        let expected = patients_to_batch(&site.patients[rows..rows + batch.num_rows()])?;
        assert_eq!(batch, expected);
        rows += batch.num_rows();
    }
    assert_eq!(rows, 70_000);

    let csv = write_site(&site, &tmp.path().join("csv"), DataFormat::Csv)?;
    assert!(csv.data.ends_with("patients.csv"));
    let df = ctx
        .read_csv(csv.data.to_str().unwrap(), CsvReadOptions::new())
        .await?;
    // Inferred CSV types match the Parquet schema (nullability aside).
    assert_same_columns(df.schema().as_arrow(), &patient_schema());
    assert_eq!(df.count().await?, 70_000);

    let consent = ctx
        .read_csv(csv.consent.to_str().unwrap(), CsvReadOptions::new())
        .await?;
    assert_eq!(consent.count().await?, site.consent.len());
    let opt = ctx
        .read_csv(csv.opt_out.to_str().unwrap(), CsvReadOptions::new())
        .await?;
    assert_eq!(opt.count().await?, site.opt_out.len());
    let text = fs::read_to_string(&csv.consent)?;
    assert!(text.starts_with("patient_id,purposes,valid_from,withdrawn_at\n"));
    assert!(fs::read_to_string(&csv.opt_out)?.starts_with("patient_id\n"));

    // Streaming generation writes byte-identical CSV files.
    let spec_b = spec("hospital-b", 70_000, 5);
    let streamed = write_generated_site(&spec_b, &tmp.path().join("stream"), DataFormat::Csv)?;
    assert_eq!(fs::read(&streamed.data)?, fs::read(&csv.data)?);
    assert_eq!(fs::read(&streamed.consent)?, fs::read(&csv.consent)?);
    assert_eq!(fs::read(&streamed.opt_out)?, fs::read(&csv.opt_out)?);
    Ok(())
}
