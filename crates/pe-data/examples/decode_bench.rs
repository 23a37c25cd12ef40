//! Decoder measurement: `image` vs zune-jpeg vs libjpeg-turbo (full and DCT-scaled), one thread.
//!
//! Usage: `cargo run --release -p pe-data --example decode_bench -- <folder with JPEGs> [seconds per case]`.
//! Files are read into memory first, so this times decoding only (to packed RGB).

use pe_data::decode::{Decoder, DecoderKind, RgbImage};
use std::time::{Duration, Instant};

fn collect(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpeg") || e.eq_ignore_ascii_case("jpg"))
        {
            if let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(String::as_str).unwrap_or("data/bench-photos");
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let mut files = Vec::new();
    collect(std::path::Path::new(dir), &mut files);
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
    let cases: Vec<(&str, DecoderKind, usize)> = vec![
        ("image::load_from_memory", DecoderKind::Image, 1),
        ("zune-jpeg", DecoderKind::Zune, 1),
        ("turbojpeg 1/1", DecoderKind::Turbo, 1),
        ("turbojpeg 1/2", DecoderKind::Turbo, 2),
        ("turbojpeg 1/4", DecoderKind::Turbo, 4),
        ("turbojpeg 1/8", DecoderKind::Turbo, 8),
    ];
    for (name, kind, denom) in cases {
        let mut d = Decoder::new(kind);
        if d.kind() != kind {
            println!("{name:<28} (not built: enable the turbojpeg feature)");
            continue;
        }
        let mut out = RgbImage::default();
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            for f in &files {
                d.decode_into(f, denom, &mut out).expect("decode");
                n += 1;
            }
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!("{name:<28} {rate:>10.1} {:>12.1}", rate * mp);
    }
}
