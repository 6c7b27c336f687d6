//! `--regions auto`: binds the finder (the model, the classes' and the background's embeddings)
//! to the regions once the model is loaded.

use super::context::Context;
use super::flags::RegionArgs;
use crate::checkpoint::Checkpoint;
use crate::classify::Classifier;
use crate::labels::{LabelSet, Templates};
use crate::regions::auto::{AutoSettings, DenseFinder, BACKGROUND};
use crate::regions::Regions;
use anyhow::{Context as _, Result};
use candle_core::Tensor;
use std::path::Path;
use std::sync::Arc;

/// What `--regions auto` needs besides the regions: the classes and how they are prompted,
/// and the background (`--background`, else the built-in one).
pub(super) struct Dishes<'a> {
    pub labels: &'a LabelSet,
    pub classifier: &'a Classifier,
    pub templates: &'a Templates,
    pub background: Option<&'a Path>,
}

impl<'a> Dishes<'a> {
    /// The classes of a command, with the background its region flags name.
    pub fn new(
        labels: &'a LabelSet,
        classifier: &'a Classifier,
        templates: &'a Templates,
        regions: &'a RegionArgs,
    ) -> Self {
        Self {
            labels,
            classifier,
            templates,
            background: regions.background.as_deref(),
        }
    }
}

/// Gives `--regions auto` its finder (see [`finder`]).
pub(super) fn bind(
    cx: &Context,
    regions: Option<&mut Regions>,
    ckpt: &Arc<Checkpoint>,
    dishes: &Dishes,
) -> Result<()> {
    let Some(regions) = regions.filter(|r| r.is_auto()) else {
        return Ok(());
    };
    regions.bind(Arc::new(finder(cx, ckpt, dishes)?));
    Ok(())
}

/// The finder of `--regions auto`: the dishes are the label file's classes as the classifier
/// embeds them, told from the background's.
pub(super) fn finder(cx: &Context, ckpt: &Arc<Checkpoint>, dishes: &Dishes) -> Result<DenseFinder> {
    let Dishes {
        labels,
        classifier,
        templates,
        background,
    } = *dishes;
    let background = match background {
        Some(file) => LabelSet::load(file)?,
        None => LabelSet::parse(BACKGROUND.as_bytes(), Path::new("(built-in background)"))?,
    };
    let background = cx.classifier(ckpt, &background, templates)?;
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
