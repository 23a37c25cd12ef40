//! Where a train sample's time goes: each pipeline stage timed on its own, one thread, files in memory.
//!
//! Usage: `cargo run --release -p pe-data --example stage_bench -- <folder with JPEGs> [rounds=3]`.
//! Why a separate example: `pipeline_bench` measures the loader end to end, which says how fast but not
//! what to optimise. Here every stage runs over all files (or over their 224 px crops) in a tight loop,
//! so the per-image costs add up to roughly the `Transform::apply` time printed last. RandAugment ops
//! are listed one by one at magnitude 9; with DeiT's policy an image pays about one op on average
//! (2 layers x p 0.5), so the mean of the op rows is what RandAugment costs per image.

mod common;

use pe_data::config::DataConfig;
use pe_data::decode::{scale_denominator, Decoder, DecoderKind, RgbImage};
use pe_data::rng::{Rng, Stream};
use pe_data::transforms::erasing::RandomErasing;
use pe_data::transforms::geometry::{self, Region};
use pe_data::transforms::rand_augment::{Op, RandAugment, RandAugmentSpec, RAND_INCREASING_TRANSFORMS};
use pe_data::transforms::resize::{Filter, Interpolation, Resizer};
use pe_data::transforms::{flip_horizontal, hwc_to_chw, Scratch};
use pe_data::Transform;
use std::time::Instant;

/// Best (minimum) of `rounds` runs of `f` over `n` items, in microseconds per item: the minimum is the
/// least disturbed by the other processes on a shared machine.
fn time(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(String::as_str).unwrap_or("data/bench-photos");
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut files = Vec::new();
    common::collect(std::path::Path::new(dir), &mut files);
    if files.is_empty() {
        eprintln!("no JPEG files under {dir} (run bench/data/make_photos.py)");
        std::process::exit(1);
    }
    let n = files.len();
    let size = 224;
    let mut dec = Decoder::new(DecoderKind::Turbo);
    let headers: Vec<_> = files.iter().map(|f| dec.header(f).expect("header")).collect();
    let mut rng = Rng::keyed(Stream::Sample, &[1]);
    let boxes: Vec<_> = headers
        .iter()
        .map(|h| geometry::random_resized_crop(h.width, h.height, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng))
        .collect();
    let denoms: Vec<usize> =
        boxes.iter().map(|b| scale_denominator(b.width as f64, b.height as f64, size, size)).collect();
    let row = |name: &str, us: f64| println!("{name:<34} {us:>9.1} us/img");
    println!("{n} files, {size} px output, best of {rounds}");

    row("header", time(rounds, n, || files.iter().for_each(|f| drop(dec.header(f)))));
    let mut img = RgbImage::default();
    let us = time(rounds, n, || {
        for (f, &d) in files.iter().zip(&denoms) {
            dec.decode_into(f, d, &mut img).expect("decode");
        }
    });
    row("decode (full, RRC's DCT scale)", us);

    // Decoded images and their RRC regions, then the 224 crops that the later stages work on.
    let decoded: Vec<RgbImage> = files
        .iter()
        .zip(&denoms)
        .map(|(f, &d)| {
            let mut im = RgbImage::default();
            dec.decode_into(f, d, &mut im).expect("decode");
            im
        })
        .collect();
    let regions: Vec<Region> = boxes
        .iter()
        .zip(&headers)
        .zip(&decoded)
        .map(|((b, h), im)| {
            let (sx, sy) = (im.width as f64 / h.width as f64, im.height as f64 / h.height as f64);
            Region {
                left: b.left as f64 * sx,
                top: b.top as f64 * sy,
                width: (b.width as f64 * sx).min(im.width as f64),
                height: (b.height as f64 * sy).min(im.height as f64),
            }
        })
        .collect();
    let mut resizer = Resizer::new();
    let mut crops: Vec<RgbImage> = (0..n).map(|_| RgbImage::new(size, size)).collect();
    for filter in [Filter::Bilinear, Filter::Bicubic] {
        let us = time(rounds, n, || {
            for ((im, r), out) in decoded.iter().zip(&regions).zip(crops.iter_mut()) {
                resizer.resize_region(im, *r, filter, out).expect("resize");
            }
        });
        row(&format!("resize RRC region ({filter:?})"), us);
    }
    let originals = crops.clone();
    row("flip", time(rounds, n, || crops.iter_mut().for_each(flip_horizontal)));
    let reset = |crops: &mut Vec<RgbImage>| {
        for (c, o) in crops.iter_mut().zip(&originals) {
            c.data.copy_from_slice(&o.data);
        }
    };
    let copy_us = time(rounds, n, || reset(&mut crops));
    row("(copy 224 image, subtracted below)", copy_us);

    let cfg = DataConfig::default();
    let ra = RandAugment {
        policy: RandAugmentSpec::deit(),
        fill: cfg.mean_pixel(),
        interpolation: Interpolation::Bicubic,
    };
    let (mut tmp, mut buf) = (RgbImage::default(), Vec::new());
    let mut sum = 0.0;
    let ops: Vec<Op> = RAND_INCREASING_TRANSFORMS.to_vec();
    for &op in &ops {
        let us = time(rounds, n, || {
            reset(&mut crops);
            for c in crops.iter_mut() {
                ra.apply_op(op, 9.0, c, &mut rng, &mut tmp, &mut buf);
            }
        }) - copy_us;
        sum += us;
        row(&format!("  RA {op:?}"), us);
    }
    row("RandAugment mean op (~ per image)", sum / ops.len() as f64);

    let mut chw = vec![0u8; 3 * size * size];
    row("hwc_to_chw", time(rounds, n, || crops.iter().for_each(|c| hwc_to_chw(c, &mut chw))));
    let re = RandomErasing::new(1.0, cfg.remode, 1, cfg.mean, cfg.std);
    let us = time(rounds, n, || {
        for _ in 0..n {
            re.apply(&mut chw, size, size, &mut rng);
        }
    });
    row("erasing (prob 1; x0.25 in DeiT)", us);

    for (name, deit) in [("Transform::apply train-basic", false), ("Transform::apply train-deit", true)] {
        let mut c = DataConfig { color_jitter: 0.0, ..Default::default() };
        if deit {
            c.interpolation = Interpolation::Bicubic;
            c.auto_augment = Some(RandAugmentSpec::deit());
            c.reprob = 0.25;
        }
        let t = Transform::train(&c).expect("config");
        let mut s = Scratch::new(DecoderKind::Turbo);
        let mut out = vec![0u8; t.sample_len()];
        let us = time(rounds, n, || {
            for (i, f) in files.iter().enumerate() {
                let mut r = Rng::keyed(Stream::Sample, &[i as u64]);
                t.apply(f, &mut r, &mut s, &mut out).expect("apply");
            }
        });
        row(name, us);
    }
    // Eval's resample on its own: Resize(256) + CenterCrop(224) as one region, bilinear.
    let eval_regions: Vec<Region> =
        decoded.iter().map(|im| geometry::eval_region(im.width, im.height, size, 0.875)).collect();
    let full: Vec<RgbImage> = files
        .iter()
        .map(|f| {
            let mut im = RgbImage::default();
            dec.decode_into(f, 1, &mut im).expect("decode");
            im
        })
        .collect();
    let us = time(rounds, n, || {
        for ((im, r), out) in full.iter().zip(&eval_regions).zip(crops.iter_mut()) {
            resizer.resize_region(im, *r, Filter::Bilinear, out).expect("resize");
        }
    });
    row("resize eval region (Bilinear)", us);
    let t = Transform::eval(&DataConfig::default()).expect("config");
    let mut s = Scratch::new(DecoderKind::Turbo);
    let mut out = vec![0u8; t.sample_len()];
    let us = time(rounds, n, || {
        for f in &files {
            t.apply(f, &mut Rng::keyed(Stream::Sample, &[0]), &mut s, &mut out).expect("apply");
        }
    });
    row("Transform::apply eval", us);
}
