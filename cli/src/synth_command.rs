//! `plexus synth`: synthetic hospitals' patient, consent and opt-out files
//! for a trial network, without running anything. The patients are the
//! [`plexus_sandbox::synth`] generator's; with the same `--patients` and `--seed`
//! they are those `plexus demo --keep DIR` leaves in `DIR/sites/`, so the
//! example configs in `deploy/` read either.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use plexus_sandbox::synth::{self, DataFormat, SitePaths, SiteSpec};

/// What `plexus synth` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Sites go to `OUT/sites/<name>/`.
    pub out: PathBuf,
    pub sites: usize,
    pub patients: usize,
    /// One format for every site; `None` mixes them as the demo does.
    pub format: Option<DataFormat>,
    pub seed: u64,
}

/// One site written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub name: String,
    pub patients: usize,
    pub paths: SitePaths,
}

/// The demo's formats, cycled over the sites: every third site is CSV.
const MIXED: [DataFormat; 3] = [DataFormat::Parquet, DataFormat::Parquet, DataFormat::Csv];

/// The `i`-th site's name (from 0): hospital-a, hospital-b, … then
/// hospital-27, hospital-28, … past the alphabet, as the sandbox names them.
pub fn site_name(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => format!("hospital-{}", char::from(b'a' + i)),
        None => format!("hospital-{}", i + 1),
    }
}

/// The sites, with the names and seeds the sandbox (and so `plexus demo`)
/// gives them.
pub fn specs(sites: usize, patients: usize, seed: u64) -> Vec<SiteSpec> {
    (0..sites)
        .map(|i| SiteSpec {
            name: site_name(i),
            patients,
            seed: seed.wrapping_add(i as u64 * 7919),
        })
        .collect()
}

/// The format of the `i`-th site.
pub fn format_of(format: Option<DataFormat>, i: usize) -> DataFormat {
    format.unwrap_or(MIXED[i % MIXED.len()])
}

/// Writes every site, one patient chunk at a time (a million patients a
/// site need no more memory than a thousand).
pub fn write(opts: &SynthOptions) -> Result<Vec<Written>> {
    if opts.sites == 0 {
        bail!("--sites must be at least 1");
    }
    if opts.patients == 0 {
        bail!("--patients must be at least 1");
    }
    let sites = opts.out.join("sites");
    specs(opts.sites, opts.patients, opts.seed)
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let dir = sites.join(&spec.name);
            let paths = synth::write_generated_site(spec, &dir, format_of(opts.format, i))
                .with_context(|| format!("cannot write {}", dir.display()))?;
            Ok(Written {
                name: spec.name.clone(),
                patients: spec.patients,
                paths,
            })
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// What was written, and the `node.toml` sections that point a node at
/// the first site (absolute paths: a relative one in node.toml is read
/// from node.toml's folder, not from here).
pub fn report(opts: &SynthOptions, written: &[Written]) -> String {
    let mut out = format!(
        "wrote {} synthetic hospital{} ({} patients each, seed {}) to {}:\n",
        written.len(),
        if written.len() == 1 { "" } else { "s" },
        opts.patients,
        opts.seed,
        opts.out.join("sites").display()
    );
    let width = written.iter().map(|w| w.name.len()).max().unwrap_or(0);
    for w in written {
        out.push_str(&format!(
            "  {:width$}  {}/{{{}, {}, {}}}\n",
            w.name,
            w.paths.data.parent().unwrap_or(Path::new("")).display(),
            file_name(&w.paths.data),
            file_name(&w.paths.consent),
            file_name(&w.paths.opt_out),
        ));
    }
    let Some(first) = written.first() else {
        return out;
    };
    let absolute = |p: &Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    out.push_str(&format!(
        "\nTo point a node at {} (the others alike), put these sections in its node.toml,\n\
         whose [node] id must be the name in the node's certificate. The example configs\n\
         deploy/node-a.toml, -b and -c read deploy/demo/sites/ (--out deploy/demo) already.\n\n",
        first.name
    ));
    out.push_str(&format!(
        "[data]\npath = {:?}\npatient_id = \"patient_id\"\n\n[data.columns]\n",
        absolute(&first.paths.data)
    ));
    for (variable, column) in synth::node_columns() {
        out.push_str(&format!("{variable} = {column:?}\n"));
    }
    out.push_str(&format!(
        "\n[consent]\npath = {:?}\nopt_out = {:?}\n",
        absolute(&first.paths.consent),
        absolute(&first.paths.opt_out)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_site_in_its_format_and_says_how_to_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            out: dir.path().join("demo"),
            sites: 4,
            patients: 30,
            format: None,
            seed: 5,
        };
        let written = write(&opts).unwrap();
        let names: Vec<&str> = written.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
        );
        let data: Vec<String> = written.iter().map(|w| file_name(&w.paths.data)).collect();
        assert_eq!(
            data,
            [
                "patients.parquet",
                "patients.parquet",
                "patients.csv",
                "patients.parquet"
            ]
        );
        for w in &written {
            for p in [&w.paths.data, &w.paths.consent, &w.paths.opt_out] {
                assert!(p.is_file(), "{}", p.display());
                assert!(p.starts_with(dir.path().join("demo/sites").join(&w.name)));
            }
        }
        // The same patients as the generator's for that spec.
        let csv = std::fs::read_to_string(&written[2].paths.data).unwrap();
        let site = synth::generate_site(&specs(4, 30, 5)[2]);
        assert_eq!(csv.lines().count(), 31);
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&site.patients[0].patient_id));

        let text = report(&opts, &written);
        assert!(text.starts_with("wrote 4 synthetic hospitals (30 patients each, seed 5)"));
        assert!(text.contains("[data]\npath = \"/"), "{text}");
        assert!(text.contains("hospital-a/patients.parquet\""), "{text}");
        assert!(text.contains("death = \"died\""), "{text}");
        assert!(text.contains("[consent]\npath = \"/"), "{text}");

        // One format for all, when asked.
        let csv_only = SynthOptions {
            format: Some(DataFormat::Csv),
            sites: 2,
            ..opts.clone()
        };
        for w in write(&csv_only).unwrap() {
            assert_eq!(file_name(&w.paths.data), "patients.csv");
        }
    }

    #[test]
    fn refuses_an_empty_network() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            out: dir.path().to_path_buf(),
            sites: 0,
            patients: 10,
            format: None,
            seed: 1,
        };
        assert!(write(&opts).unwrap_err().to_string().contains("--sites"));
        let opts = SynthOptions {
            sites: 1,
            patients: 0,
            ..opts
        };
        assert!(write(&opts).unwrap_err().to_string().contains("--patients"));
    }
}
