//! # insilico-models-zoo
//!
//! Ready-made models, each a model file in the model language (see
//! docs/models.md), compiled at run time like a user's own file: no engine
//! knows a model by name. The files live in `models-zoo/models/` and are
//! embedded in the binary.
//!
//! | name | what |
//! |---|---|
//! | `pk-{1,2,3}cmt-{oral,iv}` | compartmental PK, linear elimination |
//! | `pk-{1,2,3}cmt-{oral,iv}-mm` | the same with Michaelis–Menten elimination |
//! | `pk-{1,2}cmt-oral-mm-linear` | mixed Michaelis–Menten + linear elimination |
//! | `pk-1cmt-transit` | three transit compartments before absorption |
//! | `pk-1cmt-oral-hybrid` | P4's hybrid: a learned elimination flux |
//! | `organoid-drug-response` | the organoid sweep model (medium drug as an input) |
//! | `simeoni-tumour-growth` | Simeoni tumour growth inhibition driven by IV PK |
//!
//! ```
//! let m = insilico_models_zoo::load("pk-2cmt-oral")?;
//! assert_eq!(m.state_names(), ["depot", "central", "peripheral1", "eliminated"]);
//! # Ok::<(), insilico_model::ModelError>(())
//! ```

#![warn(missing_docs)]

use std::path::Path;

use insilico_model::{Model, ModelError};

macro_rules! zoo {
    ($($name:literal),* $(,)?) => {
        /// Every zoo model: name and source text.
        pub const MODELS: &[(&str, &str)] = &[$(($name, include_str!(concat!("../models/", $name, ".model")))),*];
    };
}

zoo!(
    "pk-1cmt-oral",
    "pk-1cmt-iv",
    "pk-2cmt-oral",
    "pk-2cmt-iv",
    "pk-3cmt-oral",
    "pk-3cmt-iv",
    "pk-1cmt-oral-mm",
    "pk-1cmt-iv-mm",
    "pk-2cmt-oral-mm",
    "pk-2cmt-iv-mm",
    "pk-3cmt-oral-mm",
    "pk-3cmt-iv-mm",
    "pk-1cmt-oral-mm-linear",
    "pk-2cmt-oral-mm-linear",
    "pk-1cmt-transit",
    "pk-1cmt-oral-hybrid",
    "organoid-drug-response",
    "simeoni-tumour-growth",
);

/// Names of every zoo model.
pub fn names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.0).collect()
}

/// The source text of zoo model `name`.
pub fn source(name: &str) -> Option<&'static str> {
    MODELS.iter().find(|m| m.0 == name).map(|m| m.1)
}

/// Compiles zoo model `name`.
pub fn load(name: &str) -> Result<Model, ModelError> {
    let text = source(name).ok_or_else(|| ModelError::Model {
        file: name.to_string(),
        message: format!("no zoo model of that name (the zoo has {})", names().join(", ")),
    })?;
    Model::parse(text, &format!("{name}.model"))
}

/// A model named in a config: a zoo name, or a path to a model file (a name
/// ending in `.model` or containing a path separator), relative paths
/// resolved against `base_dir`.
pub fn resolve(spec: &str, base_dir: Option<&Path>) -> Result<Model, ModelError> {
    let spec = spec.trim();
    if source(spec).is_some() {
        return load(spec);
    }
    let looks_like_path = spec.ends_with(".model") || spec.contains('/') || spec.contains('\\');
    if !looks_like_path {
        let close = names()
            .into_iter()
            .filter(|n| n.contains(spec) || spec.contains(n))
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>();
        return Err(ModelError::Model {
            file: spec.to_string(),
            message: format!(
                "not a zoo model{} (the zoo has {}); a model file's path ends in .model",
                if close.is_empty() { String::new() } else { format!(" (close: {})", close.join(", ")) },
                names().join(", ")
            ),
        });
    }
    let path = match base_dir {
        Some(d) if Path::new(spec).is_relative() => d.join(spec),
        _ => Path::new(spec).to_path_buf(),
    };
    Model::from_file(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_zoo_model_compiles() {
        for name in super::names() {
            let m = super::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(m.nstates() > 0, "{name}");
        }
    }
}
