//! The data and augmentation settings of an experiment, with timm's names and timm's defaults.
//!
//! Deserialised from the `[data]` table of an experiment TOML (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored knob). Batch size and seed are passed to the loader separately because
//! the runner owns them.

use crate::decode::DecoderKind;
use crate::error::{Error, Result};
use crate::transforms::rand_augment::RandAugmentSpec;
use crate::transforms::resize::Interpolation;
use crate::wds::{ClassSpec, LabelKey, ShardList};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// ImageNet channel means (RGB, in [0, 1]); the runner normalises with these on the device.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, in [0, 1]).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// How random erasing fills its box (timm's `remode`), defined in normalised space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EraseMode {
    /// Zeros in normalised space, i.e. the mean colour.
    Const,
    /// One N(0, 1) colour per box and channel.
    Rand,
    /// N(0, 1) per pixel and channel (timm's default).
    #[default]
    Pixel,
}

/// Data set, augmentation and loader settings (timm `train.py` names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// ImageFolder root holding `train/` and `val/` (or the splits named below).
    pub root: PathBuf,
    /// Training split folder name under `root`.
    pub train_split: String,
    /// Evaluation split folder name under `root`.
    pub val_split: String,
    /// Output side length (square crops).
    pub img_size: usize,
    /// Eval: resize the shorter side to `floor(img_size / crop_pct)`, then center-crop.
    pub crop_pct: f64,
    /// Resampling filter.
    pub interpolation: Interpolation,
    /// RandomResizedCrop area range, fraction of the image.
    pub scale: [f64; 2],
    /// RandomResizedCrop aspect-ratio range (w / h).
    pub ratio: [f64; 2],
    /// Horizontal flip probability.
    pub hflip: f64,
    /// Colour jitter strength for brightness, contrast and saturation (0 = off). As in timm it is
    /// ignored when `auto_augment` is set.
    pub color_jitter: f64,
    /// RandAugment policy, written as timm's string, e.g. `"rand-m9-mstd0.5-inc1"` (DeiT) and parsed
    /// when the config is read; `None`/absent = off.
    pub auto_augment: Option<RandAugmentSpec>,
    /// Random-erasing probability (0 = off).
    pub reprob: f64,
    /// Random-erasing fill mode.
    pub remode: EraseMode,
    /// Random-erasing boxes per image (timm's `recount`).
    pub recount: usize,
    /// Mixup Beta(α, α); 0 = off.
    pub mixup_alpha: f64,
    /// CutMix Beta(α, α); 0 = off.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub mixup_prob: f64,
    /// Probability of CutMix instead of Mixup when both are on.
    pub mixup_switch_prob: f64,
    /// Label smoothing folded into the soft targets.
    pub label_smoothing: f64,
    /// Decode/augment worker threads; 0 = one per available core.
    pub workers: usize,
    /// Batches prepared ahead of the consumer (bounds host memory).
    pub prefetch: usize,
    /// Repeated augmentation: each image appears this many times per epoch (DeiT: 3; 1 = off).
    pub repeated_aug: usize,
    /// How the data is stored: an ImageFolder, tar shards from `pe prepare shards`, or WebDataset
    /// shards listed by URL.
    pub format: DataFormat,
    /// `webdataset`: the training shards, a list or a brace pattern (`train-{0000..0146}.tar`, several
    /// joined by `::`); paths, `file://`, `http(s)://`, `s3://`, `gs://`, `az://`, `pipe:COMMAND`;
    /// relative names are under `root`.
    pub train_urls: ShardList,
    /// `webdataset`: the evaluation shards, as `train_urls`.
    pub val_urls: ShardList,
    /// `webdataset`: the member holding a sample's label (`cls`), or `json:FIELD` for a field of its
    /// `.json` member.
    pub label_key: LabelKey,
    /// `webdataset`: the class list, a count or names, when the shards' metadata does not give it.
    pub classes: Option<ClassSpec>,
    /// `shards` and `webdataset`: failed reads of a shard retried (re-opened, with backoff) before the
    /// run stops.
    pub read_retries: u32,
    /// JPEG decoder.
    pub decoder: DecoderKind,
    /// Let libjpeg-turbo decode at 1/2, 1/4, 1/8 scale when the crop is at least twice the output.
    pub dct_scaling: bool,
    /// Channel means used for the erasing and RandAugment fill colours (RGB, [0, 1]).
    pub mean: [f64; 3],
    /// Channel standard deviations (RGB, [0, 1]).
    pub std: [f64; 3],
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            root: PathBuf::from("data/fashion-mnist"),
            train_split: "train".into(),
            val_split: "val".into(),
            img_size: 224,
            crop_pct: 0.875,
            interpolation: Interpolation::Bilinear,
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.5,
            color_jitter: 0.4,
            auto_augment: None,
            reprob: 0.0,
            remode: EraseMode::Pixel,
            recount: 1,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            mixup_prob: 1.0,
            mixup_switch_prob: 0.5,
            label_smoothing: 0.1,
            workers: 0,
            prefetch: 4,
            repeated_aug: 1,
            format: DataFormat::Folder,
            train_urls: ShardList::default(),
            val_urls: ShardList::default(),
            label_key: LabelKey::default(),
            classes: None,
            read_retries: 5,
            decoder: DecoderKind::default(),
            dct_scaling: true,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(msg()))
    }
}

impl DataConfig {
    /// DeiT's ImageNet recipe (Touvron et al. 2021): bicubic, RandAugment m9, erasing 0.25, Mixup 0.8,
    /// CutMix 1.0, smoothing 0.1, 3 repeats.
    pub fn deit() -> Self {
        DataConfig {
            interpolation: Interpolation::Bicubic,
            auto_augment: Some(RandAugmentSpec::deit()),
            reprob: 0.25,
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            repeated_aug: 3,
            root: PathBuf::from("data/imagenet"),
            ..Default::default()
        }
    }

    /// Check ranges; call once after deserialising (the RandAugment string is parsed by then).
    pub fn validate(&self) -> Result<()> {
        let p =
            |name: &str, v: f64| check((0.0..=1.0).contains(&v), || format!("{name} = {v} is not in [0, 1]"));
        check(self.img_size > 0, || "img_size must be > 0".into())?;
        check(self.crop_pct > 0.0 && self.crop_pct <= 1.0, || {
            format!("crop_pct = {} is not in (0, 1]", self.crop_pct)
        })?;
        check(self.scale[0] > 0.0 && self.scale[0] <= self.scale[1] && self.scale[1] <= 1.0, || {
            format!("scale = {:?} must satisfy 0 < lo <= hi <= 1", self.scale)
        })?;
        check(self.ratio[0] > 0.0 && self.ratio[0] <= self.ratio[1], || {
            format!("ratio = {:?} must satisfy 0 < lo <= hi", self.ratio)
        })?;
        p("hflip", self.hflip)?;
        p("reprob", self.reprob)?;
        p("mixup_prob", self.mixup_prob)?;
        p("mixup_switch_prob", self.mixup_switch_prob)?;
        p("label_smoothing", self.label_smoothing)?;
        check(self.color_jitter.is_finite() && self.color_jitter >= 0.0, || {
            format!("color_jitter = {} must be finite and >= 0", self.color_jitter)
        })?;
        let alpha_ok = |a: f64| a.is_finite() && a >= 0.0;
        check(alpha_ok(self.mixup_alpha) && alpha_ok(self.cutmix_alpha), || {
            "mixup/cutmix alpha must be finite and >= 0".into()
        })?;
        check(self.recount >= 1, || "recount must be >= 1".into())?;
        check(self.repeated_aug >= 1, || "repeated_aug must be >= 1 (1 = off)".into())?;
        check(self.prefetch >= 1, || "prefetch must be >= 1".into())?;
        check(self.mean.iter().all(|m| m.is_finite()), || format!("mean = {:?} must be finite", self.mean))?;
        let webdataset_only = [
            ("train_urls", !self.train_urls.is_empty()),
            ("val_urls", !self.val_urls.is_empty()),
            ("label_key", self.label_key != LabelKey::default()),
            ("classes", self.classes.is_some()),
        ];
        if let Some((key, _)) = webdataset_only.iter().find(|(_, set)| *set) {
            check(self.format == DataFormat::WebDataset, || {
                format!(
                    "{key} is read only with format = \"webdataset\" (format is \"{}\")",
                    format!("{:?}", self.format).to_lowercase()
                )
            })?;
        }
        check(self.std.iter().all(|&s| s.is_finite() && s > 0.0), || {
            format!("std = {:?} must be finite and > 0", self.std)
        })
    }

    /// The number of worker threads to use (`workers`, or the available cores when 0).
    pub fn resolved_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// Fill colour in pixel space: the mean, rounded (timm's `img_mean` hparam).
    pub fn mean_pixel(&self) -> [u8; 3] {
        self.mean.map(|m| (255.0 * m).round().clamp(0.0, 255.0) as u8)
    }
}

/// How a data set is stored under `root`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// `<root>/<split>/<class>/*.jpg`, one file per image.
    #[default]
    Folder,
    /// `<root>/<split>/NNNNNN.tar` WebDataset shards with an `index.json` (`pe prepare shards`):
    /// read sequentially, few files opened, for network file systems.
    Shards,
    /// WebDataset shards anywhere (`train_urls`, `val_urls`): local, HTTP(S), S3/GCS/Azure or `pipe:`.
    #[serde(rename = "webdataset")]
    WebDataset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_timms_and_valid() {
        let c = DataConfig::default();
        c.validate().unwrap();
        assert_eq!(c.scale, [0.08, 1.0]);
        assert_eq!(c.crop_pct, 0.875);
        assert_eq!(c.mean_pixel(), [124, 116, 104]);
        DataConfig::deit().validate().unwrap();
    }

    #[test]
    fn toml_round_trip_and_unknown_fields_rejected() {
        let c: DataConfig = toml::from_str(
            r#"
            root = "/data/imagenet"
            img_size = 160
            interpolation = "bicubic"
            auto_augment = "rand-m9-mstd0.5-inc1"
            remode = "rand"
            mixup_alpha = 0.8
            "#,
        )
        .unwrap();
        assert_eq!(c.img_size, 160);
        assert_eq!(c.interpolation, Interpolation::Bicubic);
        assert_eq!(c.remode, EraseMode::Rand);
        assert_eq!(c.hflip, 0.5);
        assert_eq!(c.auto_augment, Some(RandAugmentSpec::deit()));
        c.validate().unwrap();
        let back: DataConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<DataConfig>("img_sise = 3").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let c = DataConfig { scale: [0.5, 0.1], ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("scale"));
        let e = toml::from_str::<DataConfig>(r#"auto_augment = "rand-m9-zz3""#).unwrap_err();
        assert!(e.to_string().contains("zz3"), "{e}");
        let c = DataConfig { reprob: 1.5, ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("reprob"));
        let c: DataConfig = toml::from_str(r#"train_urls = "t-{0..3}.tar""#).unwrap();
        assert_eq!(c.train_urls, ShardList(vec!["t-{0..3}.tar".into()]));
        assert!(c.validate().unwrap_err().to_string().contains("webdataset"));
        let c: DataConfig =
            toml::from_str("format = \"webdataset\"\nval_urls = [\"a.tar\", \"b.tar\"]\nclasses = 10")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.classes, Some(ClassSpec::Count(10)));
        assert!(toml::from_str::<DataConfig>(r#"label_key = "json:""#).is_err());
    }
}
