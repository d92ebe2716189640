//! Characters for a language model: a vocabulary, a train/validation split
//! and random windows.

use super::rng::SplitMix64;
use super::{invalid, DataError, Dataset, Split};
use std::fs;
use std::path::Path;

/// Which part of a corpus to sample from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Val,
}

/// Text as character ids: a sorted vocabulary of the characters that
/// occur, and the token sequence split into a leading training part and a
/// trailing validation part.
#[derive(Debug, Clone, PartialEq)]
pub struct CharCorpus {
    vocab: Vec<char>,
    train: Vec<usize>,
    val: Vec<usize>,
}

/// Windows of consecutive characters and the characters that follow them.
///
/// # Shapes
/// - `inputs`, `targets`: `[batch, context]`, row-major; `targets[b, t]` is
///   the character after `inputs[b, t]`, so `targets[b, context − 1]` is
///   the next character after the whole window.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub inputs: Vec<usize>,
    pub targets: Vec<usize>,
    pub batch: usize,
    pub context: usize,
}

impl CharCorpus {
    /// Splits `text` by characters: the last `val_fraction` is validation.
    pub fn from_text(text: &str, val_fraction: f64) -> Result<Self, DataError> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(invalid(
                "text corpus",
                format!("val_fraction = {val_fraction} must lie in (0, 1)"),
            ));
        }
        let chars: Vec<char> = text.chars().collect();
        if chars.len() < 4 {
            return Err(DataError::TooShort {
                what: "text corpus".into(),
                needed: 4,
                found: chars.len(),
            });
        }
        let mut vocab = chars.clone();
        vocab.sort_unstable();
        vocab.dedup();
        let ids: Vec<usize> = chars
            .iter()
            .map(|c| vocab.binary_search(c).unwrap_or_default())
            .collect();
        let n_val = ((chars.len() as f64 * val_fraction).round() as usize).clamp(2, ids.len() - 2);
        let mut train = ids;
        let val = train.split_off(train.len() - n_val);
        Ok(Self { vocab, train, val })
    }

    /// Reads a UTF-8 text file; see [`CharCorpus::from_text`].
    pub fn from_file(path: &Path, val_fraction: f64) -> Result<Self, DataError> {
        let bytes = fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| DataError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Self::from_text(&text, val_fraction).map_err(|e| match e {
            DataError::TooShort { needed, found, .. } => DataError::TooShort {
                what: path.display().to_string(),
                needed,
                found,
            },
            e => e,
        })
    }

    /// MNIST-1D as text, for when no text file is given: each sequence
    /// becomes a line `"<digit>:<levels>\n"`, every value quantized to one
    /// of `levels` letters (`a` = lowest) over [−2.5, 2.5] standard
    /// deviations. Predicting the next letter means continuing a noisy
    /// stroke of a known digit. Training sequences make the training part,
    /// test sequences the validation part.
    pub fn from_mnist1d(split: &Split, levels: usize) -> Result<Self, DataError> {
        if !(2..=26).contains(&levels) {
            return Err(invalid(
                "MNIST-1D text",
                format!("levels = {levels} must lie in 2..=26"),
            ));
        }
        let render = |d: &Dataset| {
            let mut text = String::new();
            for i in 0..d.len() {
                text.push(char::from(b'0' + d.labels()[i] as u8 % 10));
                text.push(':');
                for &v in d.example(i).unwrap_or_default() {
                    let t = ((f64::from(v) + 2.5) / 5.0).clamp(0.0, 1.0);
                    let level = ((t * levels as f64) as usize).min(levels - 1);
                    text.push(char::from(b'a' + level as u8));
                }
                text.push('\n');
            }
            text
        };
        let (train_text, val_text) = (render(&split.train), render(&split.test));
        let mut vocab: Vec<char> = ('0'..='9')
            .chain([':', '\n'])
            .chain((0..levels as u8).map(|l| char::from(b'a' + l)))
            .collect();
        vocab.sort_unstable();
        let encode = |t: &str| -> Vec<usize> {
            t.chars()
                .map(|c| vocab.binary_search(&c).unwrap_or_default())
                .collect()
        };
        let (train, val) = (encode(&train_text), encode(&val_text));
        if train.len() < 2 || val.len() < 2 {
            return Err(DataError::TooShort {
                what: "MNIST-1D text".into(),
                needed: 2,
                found: train.len().min(val.len()),
            });
        }
        Ok(Self { vocab, train, val })
    }

    /// The characters, by id.
    pub fn vocab(&self) -> &[char] {
        &self.vocab
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn tokens(&self, part: Part) -> &[usize] {
        match part {
            Part::Train => &self.train,
            Part::Val => &self.val,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<usize>, DataError> {
        text.chars()
            .map(|ch| {
                self.vocab
                    .binary_search(&ch)
                    .map_err(|_| DataError::UnknownChar { ch })
            })
            .collect()
    }

    /// Ids outside the vocabulary decode to U+FFFD.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|&i| self.vocab.get(i).copied().unwrap_or('\u{fffd}'))
            .collect()
    }

    /// `batch` windows of `context` characters at uniformly random starts
    /// in `part`, with their next characters.
    pub fn sample(
        &self,
        part: Part,
        batch: usize,
        context: usize,
        rng: &mut SplitMix64,
    ) -> Result<TokenBatch, DataError> {
        let tokens = self.tokens(part);
        if batch == 0 || context == 0 {
            return Err(invalid(
                "token batch",
                format!("batch = {batch} and context = {context} must be positive"),
            ));
        }
        if tokens.len() <= context {
            return Err(DataError::TooShort {
                what: format!("{part:?} part of the corpus"),
                needed: context + 1,
                found: tokens.len(),
            });
        }
        let starts = (tokens.len() - context) as u64;
        let mut inputs = Vec::with_capacity(batch * context);
        let mut targets = Vec::with_capacity(batch * context);
        for _ in 0..batch {
            let s = rng.below(starts) as usize;
            inputs.extend_from_slice(&tokens[s..s + context]);
            targets.extend_from_slice(&tokens[s + 1..s + context + 1]);
        }
        Ok(TokenBatch {
            inputs,
            targets,
            batch,
            context,
        })
    }
}
