//! foodclip: zero-shot food photo classification with CLIP-family models.
//!
//! Photos and label prompts (Korean or English) are embedded into one space by a CLIP image and
//! text encoder; each photo is ranked against the labels by cosine similarity. The modules:
//!
//! - [`model`]: the CLIP model on candle-nn, its config, weights and tokenizer;
//! - [`registry`] and [`source`]: known checkpoints and where their files come from;
//! - [`checkpoint`]: a loaded model with its tokenizer and preprocessing;
//! - [`preprocess`]: decoding photos and preparing the pixels as the reference does;
//! - [`labels`]: label files and prompt templates;
//! - [`classify`]: class embeddings, image embeddings and ranked predictions; [`adapter`]:
//!   learning a kitchen's dishes from a few photos (Tip-Adapter);
//! - [`cache`]: the on-disk cache of prompt embeddings; [`embeddings`]: stored image embeddings;
//! - [`eval`]: data sets, accuracy metrics and open-set calibration; [`leftovers`]: how much of
//!   each dish comes back, from served and returned tray photos; [`forecast`]: how much will
//!   come back of a planned menu, and how much to cook;
//! - [`inputs`]: files, folders, stdin lists, shards and resumed runs;
//! - [`pipeline`]: batches decoded while the model works;
//! - [`output`]: printing records; [`report`]: the HTML report; [`cli`]: the command line;
//! - [`regions`]: trays: where a photo's regions come from, and cutting them out;
//! - [`draw`]: trays drawn with their boxes and answers (SVG); [`serve`]: the HTTP API and page;
//! - [`fsutil`]: atomic writes and lossless paths, shared by all of them; [`markup`]: escaping
//!   and embedded pictures for the HTML and SVG; [`text`]: aligned columns for terminal tables.

pub mod adapter;
pub mod cache;
pub mod checkpoint;
pub mod classify;
pub mod cli;
pub mod draw;
pub mod embeddings;
pub mod eval;
pub mod forecast;
pub mod fsutil;
pub mod inputs;
pub mod labels;
pub mod leftovers;
pub mod markup;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod preprocess;
pub mod regions;
pub mod registry;
pub mod report;
pub mod serve;
pub mod source;
pub mod store;
pub mod text;
