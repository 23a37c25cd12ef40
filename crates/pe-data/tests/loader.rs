//! Loader behaviour end to end on a small on-disk ImageFolder: shapes, determinism across worker
//! counts, bad files, eval order, shards, buffer reuse and Mixup targets on real batches.

use pe_data::config::DataConfig;
use pe_data::index::{ImageFolder, IndexCache};
use pe_data::loader::{Loader, LoaderOptions, Split};
use pe_data::mixup::{partner, MixKind, Mixup};
use pe_data::sampler::Sampling;
use pe_data::{Error, Transform};
use std::path::Path;

/// 3 classes x 7 images of varied sizes; image k of class c has a distinct colour.
fn make_folder(root: &Path) {
    for c in 0..3 {
        let dir = root.join("train").join(format!("class{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..7u32 {
            let (w, h) = (40 + 13 * k, 30 + 7 * c);
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 5) as u8, (30 * k + y) as u8, (80 * c) as u8])
            });
            img.save(dir.join(format!("{k}.jpg"))).unwrap();
        }
    }
}

fn cfg(root: &Path) -> DataConfig {
    DataConfig {
        root: root.to_path_buf(),
        img_size: 24,
        auto_augment: Some("rand-m9-mstd0.5-inc1".parse().unwrap()),
        reprob: 0.25,
        ..Default::default()
    }
}

fn loader(root: &Path, workers: usize, opts: impl FnOnce(&mut LoaderOptions)) -> Loader {
    let c = cfg(root);
    let ds = ImageFolder::open(root, "train", IndexCache::Beside).unwrap();
    let mut o = LoaderOptions::train(&c, 4, 42, 0, 1);
    o.workers = workers;
    o.report_bad_files = false;
    opts(&mut o);
    Loader::new(ds, Transform::train(&c).unwrap(), o).unwrap()
}

type Flat = Vec<(Vec<u8>, Vec<i64>)>;

fn collect(l: &Loader, epoch: u64) -> Flat {
    l.epoch(epoch).map(|b| b.unwrap()).map(|b| (b.images, b.labels)).collect()
}

#[test]
fn batches_have_the_promised_shape() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let l = loader(t.path(), 2, |_| {});
    let folder = ImageFolder::open(t.path(), "train", IndexCache::Beside).unwrap();
    assert_eq!(l.batches_per_epoch(), 5); // 21 samples, batch 4, last dropped
    let batches: Vec<_> = l.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 5);
    for (i, b) in batches.iter().enumerate() {
        assert_eq!((b.n, b.h, b.w, b.index), (4, 24, 24, i as u64));
        assert_eq!(b.images.len(), 4 * 3 * 24 * 24);
        assert!(b.labels.iter().all(|&l| (0..3).contains(&l)));
        for (k, &idx) in b.indices.iter().enumerate() {
            assert_eq!(folder.samples[idx].1 as i64, b.labels[k]);
        }
        assert!(b.bad_files.is_empty());
    }
    let kept = loader(t.path(), 2, |o| o.drop_last = false);
    assert_eq!(kept.epoch(0).map(|b| b.unwrap().n).collect::<Vec<_>>(), vec![4, 4, 4, 4, 4, 1]);
}

#[test]
fn same_seed_same_batches_whatever_the_worker_count() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let one = collect(&loader(t.path(), 1, |_| {}), 3);
    let three = collect(&loader(t.path(), 3, |o| o.prefetch = 1), 3);
    assert_eq!(one, three);
    let other_epoch = collect(&loader(t.path(), 3, |_| {}), 4);
    assert_ne!(one, other_epoch);
    let other_seed = collect(&loader(t.path(), 1, |o| o.seed = 7), 3);
    assert_ne!(one, other_seed);
}

#[test]
fn a_resumed_epoch_continues_with_the_same_batches() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let l = loader(t.path(), 2, |_| {});
    let full: Vec<_> = l.epoch(2).map(|b| b.unwrap()).collect();
    let rest: Vec<_> = l.epoch_from(2, 3).map(|b| b.unwrap()).collect();
    assert_eq!(rest.len(), 2);
    for (a, b) in full[3..].iter().zip(&rest) {
        assert_eq!((a.index, &a.images, &a.labels), (b.index, &b.images, &b.labels));
    }
    assert_eq!(l.epoch_from(2, 99).count(), 0);
}

#[test]
fn bad_files_are_replaced_counted_and_reported() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let dir = t.path().join("train/class1");
    std::fs::write(dir.join("garbage.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let good = std::fs::read(dir.join("3.jpg")).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &good[..good.len() / 4]).unwrap();
    std::fs::write(dir.join("zz_vanished.jpg"), &good).unwrap();
    let l = loader(t.path(), 2, |o| {
        o.drop_last = false;
        o.sampling.shuffle = false;
    });
    // A file deleted after indexing is an I/O error, also replaced.
    std::fs::remove_file(dir.join("zz_vanished.jpg")).unwrap();
    let mut it = l.epoch(0);
    let batches: Vec<_> = it.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.n).sum::<usize>(), 25);
    let bad: Vec<_> = batches.iter().flat_map(|b| b.bad_files.iter()).collect();
    let names: Vec<String> =
        bad.iter().map(|b| b.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for n in ["garbage.jpg", "empty.png", "zz_vanished.jpg"] {
        assert!(names.contains(&n.to_string()), "{n} not reported in {names:?}");
    }
    let report = it.bad_files();
    assert_eq!(report.count, bad.len());
    assert!(report.to_string().contains("garbage.jpg"));
    // Replacements are real images: every label is valid, and no slot is left unfilled.
    assert!(batches.iter().all(|b| b.labels.len() == b.n));
}

#[test]
fn an_all_bad_data_set_is_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("train/only");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("{i}.jpg")), b"nope").unwrap();
    }
    let l = loader(t.path(), 1, |_| {});
    assert!(l.batches_per_epoch() == 0);
    let l = loader(t.path(), 1, |o| {
        o.drop_last = false;
        o.batch_size = 2;
    });
    let first = l.epoch(0).next().unwrap();
    assert!(matches!(first, Err(Error::TooManyBadFiles { .. })), "{first:?}");
}

#[test]
fn eval_loader_is_ordered_and_complete() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    std::fs::rename(t.path().join("train"), t.path().join("val")).unwrap();
    let c = DataConfig { workers: 2, ..cfg(t.path()) };
    let l = Loader::open(&c, Split::Eval { batch_size: 8, classes: None }, 0, 1).unwrap();
    let batches: Vec<_> = l.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), vec![8, 8, 5]);
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..21).collect::<Vec<_>>());
    // Eval is deterministic: two epochs give the same pixels.
    let again: Vec<_> = l.epoch(1).map(|b| b.unwrap().images).collect();
    assert_eq!(again, batches.iter().map(|b| b.images.clone()).collect::<Vec<_>>());
}

#[test]
fn shards_cover_the_data_set_and_repeats_triple_it() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let mut seen = Vec::new();
    for rank in 0..3 {
        let l = loader(t.path(), 1, |o| {
            o.sampling = Sampling { rank, world: 3, ..o.sampling };
            o.drop_last = false;
        });
        seen.extend(l.epoch(0).flat_map(|b| b.unwrap().indices));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..21).collect::<Vec<_>>());
    let ra = loader(t.path(), 2, |o| {
        o.sampling.repeats = 3;
        o.batch_size = 3;
    });
    for b in ra.epoch(0).map(|b| b.unwrap()) {
        // Three copies of one image in a batch, each augmented differently.
        assert!(b.indices.iter().all(|&i| i == b.indices[0]));
        let per = 3 * 24 * 24;
        assert_ne!(b.images[..per], b.images[per..2 * per]);
    }
}

#[test]
fn recycled_buffers_do_not_change_results() {
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let l = loader(t.path(), 2, |_| {});
    let fresh = collect(&l, 0);
    let mut again = Vec::new();
    for b in l.epoch(0) {
        let b = b.unwrap();
        again.push((b.images.clone(), b.labels.clone()));
        l.recycle(b.images);
    }
    assert_eq!(fresh, again);
    // Buffers handed back wait for the next batches, a bounded number of them.
    assert!(l.spare_buffers() >= 1);
    let cap = LoaderOptions::train(&cfg(t.path()), 4, 0, 0, 1).prefetch + 2;
    for _ in 0..cap + 3 {
        l.recycle(vec![0; 16]);
    }
    assert_eq!(l.spare_buffers(), cap);
}

#[test]
fn mixup_targets_on_loader_batches() {
    // Pixels are mixed on the device by the runner; crates/pe-runner/tests/parity.rs checks them.
    let t = tempfile::tempdir().unwrap();
    make_folder(t.path());
    let l = loader(t.path(), 2, |_| {});
    let c = DataConfig { mixup_alpha: 0.8, cutmix_alpha: 1.0, label_smoothing: 0.0, ..cfg(t.path()) };
    let m = Mixup::from_config(&c, l.classes().len()).unwrap();
    for b in l.epoch(0).map(|b| b.unwrap()) {
        let plan = m.plan_for(42, b.epoch, b.index, 0, b.h, b.w);
        let targets = m.soft_targets(&b.labels, &plan);
        for (i, row) in targets.chunks(3).enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            // Own label weighted by λ, the partner's by 1-λ (ε = 0 here).
            let (own, other) = (b.labels[i] as usize, b.labels[partner(i, b.n)] as usize);
            let mut expect = [0.0; 3];
            expect[own] += plan.lambda;
            expect[other] += 1.0 - plan.lambda;
            for (v, e) in row.iter().zip(expect) {
                assert!((*v as f64 - e).abs() < 1e-6);
            }
        }
        if plan.kind == MixKind::None {
            assert_eq!(plan.lambda, 1.0);
        }
    }
}
