//! Decoder measurement: `image` vs zune-jpeg vs libjpeg-turbo (full, DCT-scaled and window), one thread.
//!
//! Usage: `cargo run --release -p pe-data --example decode_bench -- <folder with JPEGs> [seconds per case]`.
//! Files are read into memory first, so this times decoding only (to packed RGB). The window rows decode
//! only a crop: a RandomResizedCrop box (torchvision's default scale/ratio, one fixed draw per file) or
//! the eval center crop (Resize 256 + CenterCrop 224), as the pipelines do.

mod common;

use pe_data::decode::{Decoder, DecoderKind, RgbImage, Window};
use pe_data::rng::{Rng, Stream};
use pe_data::transforms::geometry;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(String::as_str).unwrap_or("data/bench-photos");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let mut files = Vec::new();
    common::collect(std::path::Path::new(dir), &mut files);
    if files.is_empty() {
        eprintln!("no JPEG files under {dir} (run bench/data/make_photos.py)");
        std::process::exit(1);
    }
    let mp: f64 = {
        let mut d = Decoder::new(DecoderKind::Zune);
        files.iter().map(|f| d.header(f).map(|h| (h.width * h.height) as f64).unwrap_or(0.0)).sum::<f64>()
            / files.len() as f64
            / 1e6
    };
    println!("{} files, mean {:.3} Mpixel, {:.1} KiB", files.len(), mp, {
        files.iter().map(Vec::len).sum::<usize>() as f64 / files.len() as f64 / 1024.0
    });
    println!("{:<28} {:>10} {:>12}", "decoder", "img/s", "Mpixel/s");
    println!("(Mpixel/s counts the whole image's pixels, also for the window rows)");
    // Per file: the RRC box and the eval crop as pixel windows (full-scale decode).
    let mut rng = Rng::keyed(Stream::Sample, &[0]);
    let mut hd = Decoder::new(DecoderKind::Zune);
    let (mut rrc, mut eval) = (Vec::new(), Vec::new());
    for f in &files {
        let h = hd.header(f).expect("header");
        let b = geometry::random_resized_crop(h.width, h.height, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
        rrc.push(Window { x0: b.left, y0: b.top, x1: b.left + b.width, y1: b.top + b.height });
        let r = geometry::eval_region(h.width, h.height, 224, 0.875);
        let (x0, y0) = (r.left.floor() as usize, r.top.floor() as usize);
        let x1 = ((r.left + r.width).ceil() as usize).min(h.width);
        let y1 = ((r.top + r.height).ceil() as usize).min(h.height);
        eval.push(Window { x0, y0, x1, y1 });
    }
    let cases: Vec<(&str, DecoderKind, usize, Option<&[Window]>)> = vec![
        ("image::load_from_memory", DecoderKind::Image, 1, None),
        ("zune-jpeg", DecoderKind::Zune, 1, None),
        ("turbojpeg 1/1", DecoderKind::Turbo, 1, None),
        ("turbojpeg 1/1, RRC window", DecoderKind::Turbo, 1, Some(&rrc)),
        ("turbojpeg 1/1, eval window", DecoderKind::Turbo, 1, Some(&eval)),
        ("turbojpeg 1/2", DecoderKind::Turbo, 2, None),
        ("turbojpeg 1/4", DecoderKind::Turbo, 4, None),
        ("turbojpeg 1/8", DecoderKind::Turbo, 8, None),
    ];
    for (name, kind, denom, windows) in cases {
        let mut d = Decoder::new(kind);
        if d.kind() != kind {
            println!("{name:<28} (not built: enable the turbojpeg feature)");
            continue;
        }
        let mut out = RgbImage::default();
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            for (i, f) in files.iter().enumerate() {
                let window = windows.map(|w| w[i]);
                d.decode_window_into(f, denom, window, &mut out).expect("decode");
                n += 1;
            }
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!("{name:<28} {rate:>10.1} {:>12.1}", rate * mp);
    }
}
