//! `--regions auto`: binds the finder (the model, the classes' and the background's embeddings)
//! to the regions once the model is loaded.

use super::context::Context;
use crate::checkpoint::Checkpoint;
use crate::classify::Classifier;
use crate::labels::{LabelSet, Templates};
use crate::regions::auto::{AutoSettings, DenseFinder, BACKGROUND};
use crate::regions::Regions;
use anyhow::{Context as _, Result};
use candle_core::Tensor;
use std::path::Path;
use std::sync::Arc;

/// Gives `--regions auto` its finder (see [`finder`]).
pub(super) fn bind(
    cx: &Context,
    regions: Option<&mut Regions>,
    ckpt: &Arc<Checkpoint>,
    labels: &LabelSet,
    classifier: &Classifier,
    templates: &Templates,
) -> Result<()> {
    let Some(regions) = regions.filter(|r| r.is_auto()) else {
        return Ok(());
    };
    regions.bind(Arc::new(finder(cx, ckpt, labels, classifier, templates)?));
    Ok(())
}

/// The finder of `--regions auto`: the dishes are `labels`' classes as `classifier` embeds
/// them, told from the built-in background prompts.
pub(super) fn finder(
    cx: &Context,
    ckpt: &Arc<Checkpoint>,
    labels: &LabelSet,
    classifier: &Classifier,
    templates: &Templates,
) -> Result<DenseFinder> {
    let background = LabelSet::parse(BACKGROUND.as_bytes(), Path::new("(built-in background)"))?;
    let background = cx.scorer(ckpt, &background, templates, None)?;
    let embeddings = Tensor::cat(&[classifier.embeddings(), background.embeddings()], 0)
        .context("cannot join the dishes' and the background's embeddings")?;
    Ok(DenseFinder {
        ckpt: ckpt.clone(),
        embeddings,
        names: labels
            .classes
            .iter()
            .map(|c| c.display().to_string())
            .collect(),
        settings: AutoSettings::default(),
    })
}
