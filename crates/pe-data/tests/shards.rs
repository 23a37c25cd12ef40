//! Tar shards end to end: the writer's files and index, and the shard loader's guarantees (every
//! sample once, determinism whatever the worker count, exact mid-epoch resume, disjoint ranks, bad
//! samples replaced and counted, bad shards named).

use pe_data::config::{DataConfig, DataFormat};
use pe_data::index::{ImageFolder, IndexCache};
use pe_data::loader::{Loader, LoaderOptions, Split};
use pe_data::shards::{write_shards, ShardIndex, ShardSet, ShardWriteOptions};
use pe_data::Transform;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// 3 classes x 7 images in train, 2 classes x 2 in val (class1 missing there).
fn make_folder(root: &Path) {
    for (split, classes, per) in [("train", 0..3, 7u32), ("val", 0..2, 2)] {
        for c in classes {
            let c = if split == "val" { c * 2 } else { c };
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..per {
                let img = image::RgbImage::from_fn(40 + 13 * k, 30 + 7 * c, |x, y| {
                    image::Rgb([(x * 5) as u8, (30 * k + y) as u8, (80 * c) as u8])
                });
                img.save(dir.join(format!("img.{k}.jpg"))).unwrap();
            }
        }
    }
}

fn write(from: &Path, to: &Path, shard_bytes: u64) -> ShardIndex {
    let opts = ShardWriteOptions { shard_bytes, ..Default::default() };
    write_shards(from, to, &opts, &mut |_, _, _| {}).unwrap().index
}

fn cfg(root: &Path) -> DataConfig {
    DataConfig {
        root: root.to_path_buf(),
        img_size: 16,
        auto_augment: Some("rand-m9-mstd0.5-inc1".parse().unwrap()),
        ..Default::default()
    }
}

fn train_loader(root: &Path, workers: usize, rank: usize, world: usize, buffer: usize) -> Loader {
    let c = cfg(root);
    let mut o = LoaderOptions::train(&c, 4, 42, rank, world);
    o.workers = workers;
    o.report_bad_files = false;
    o.shuffle_buffer = buffer;
    Loader::from_shards(ShardSet::open(root, "train").unwrap(), Transform::train(&c).unwrap(), o).unwrap()
}

type Flat = Vec<(Vec<u8>, Vec<i64>, Vec<usize>)>;

fn collect(it: impl Iterator<Item = pe_data::Result<pe_data::Batch>>) -> Flat {
    it.map(|b| b.unwrap()).map(|b| (b.images, b.labels, b.indices)).collect()
}

#[test]
fn writer_packs_every_image_once_with_its_label() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("folder"), t.path().join("shards"));
    make_folder(&src);
    let index = write(&src, &dst, 6000);
    assert_eq!(index.classes, vec!["class0", "class1", "class2"]);
    let train = &index.splits["train"];
    assert_eq!(train.samples, 21);
    assert!(train.shards.len() > 2, "{train:?}");
    assert_eq!(index.splits["val"].samples, 4);
    // Read every shard with the tar crate: members come in (key.jpg, key.cls) pairs.
    let mut found: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    let mut written = Vec::new();
    for shard in &train.shards {
        let path = dst.join("train").join(&shard.file);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), shard.bytes);
        let mut ar = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let (key, ext) = name.split_once('.').unwrap();
            let slot = found.entry(key.to_string()).or_default();
            match ext {
                "jpg" => slot.0 = data,
                "cls" => slot.1 = String::from_utf8(data).unwrap(),
                other => panic!("unexpected member {other}"),
            }
            names.push(name);
        }
        assert_eq!(names.len(), 2 * shard.samples);
        written.extend(names);
    }
    // Written in a shuffled order, so shards mix classes.
    let mut sorted = written.clone();
    sorted.sort();
    assert_ne!(written, sorted);
    let folder = ImageFolder::open(&src, "train", IndexCache::Off).unwrap();
    assert_eq!(found.len(), 21);
    for (path, label) in &folder.samples {
        let rel = path.strip_prefix(src.join("train")).unwrap().display().to_string();
        let key = rel.trim_end_matches(".jpg").replace('.', "_"); // class0/img.3.jpg -> class0/img_3
        let (bytes, cls) = &found[&key];
        assert_eq!(bytes, &std::fs::read(path).unwrap(), "{key}");
        assert_eq!(cls, &label.to_string());
    }
    // A rerun of a complete set (same settings) does nothing; an interrupted one (no index) starts clean.
    let same = ShardWriteOptions { shard_bytes: 6000, ..Default::default() };
    let again = write_shards(&src, &dst, &same, &mut |_, _, _| {}).unwrap();
    assert!(!again.written);
    std::fs::remove_file(dst.join("index.json")).unwrap();
    std::fs::write(dst.join("train/000099.tar.tmp"), b"half").unwrap();
    let redo = write(&src, &dst, 6000);
    assert_eq!(redo, index);
    assert!(!dst.join("train/000099.tar.tmp").exists());
    // Never clears a folder holding something other than shards.
    let err = write_shards(&src, &src, &ShardWriteOptions::default(), &mut |_, _, _| {});
    assert!(err.unwrap_err().to_string().contains("refusing"));
}

#[test]
fn eval_shards_cover_the_split_once_with_the_run_labels() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("folder"), t.path().join("shards"));
    make_folder(&src);
    write(&src, &dst, 6000);
    let c = DataConfig { workers: 2, format: DataFormat::Shards, ..cfg(&dst) };
    let folder = ImageFolder::open(&src, "train", IndexCache::Off).unwrap();
    let mut labels = Vec::new();
    for rank in 0..2 {
        let l =
            Loader::open(&c, Split::Eval { batch_size: 3, classes: Some(&folder.classes) }, rank, 2).unwrap();
        labels.extend(l.epoch(0).flat_map(|b| b.unwrap().labels));
    }
    labels.sort_unstable();
    assert_eq!(labels, vec![0, 0, 2, 2]); // val lacks class1 and keeps training's numbering
    let l = Loader::open(&c, Split::Eval { batch_size: 3, classes: None }, 0, 1).unwrap();
    assert_eq!(l.len(), 4);
    assert_eq!(l.missing_classes(), ["class1"]);
    assert_eq!(l.classes(), ["class0", "class1", "class2"]);
    // A run class list lacking one of the set's classes is an error naming it.
    let err = Loader::open(&c, Split::Eval { batch_size: 3, classes: Some(&["class0".to_string()]) }, 0, 1)
        .unwrap_err();
    assert!(err.to_string().contains("class1"), "{err}");
}

#[test]
fn shard_epochs_are_deterministic_resumable_and_rank_disjoint() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("folder"), t.path().join("shards"));
    make_folder(&src);
    write(&src, &dst, 6000);
    let one = train_loader(&dst, 1, 0, 1, 5);
    let three = train_loader(&dst, 3, 0, 1, 5);
    assert_eq!(one.batches_per_epoch(), 5);
    let e3 = collect(one.epoch(3));
    assert_eq!(e3.len(), 5);
    assert_eq!(e3, collect(three.epoch(3)));
    assert_ne!(e3, collect(one.epoch(4)));
    // Every sample at most once per epoch, labels consistent with the flat index.
    let mut idx: Vec<usize> = e3.iter().flat_map(|b| b.2.clone()).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(idx.len(), 20);
    // Resume mid-epoch: exactly the tail.
    assert_eq!(collect(three.epoch_from(3, 2)), e3[2..].to_vec());
    assert_eq!(one.epoch_from(3, 99).count(), 0);
    // Two ranks: disjoint samples, same number of batches.
    let r: Vec<Flat> = (0..2).map(|rank| collect(train_loader(&dst, 2, rank, 2, 5).epoch(1))).collect();
    assert_eq!((r[0].len(), r[1].len()), (2, 2)); // floor(21 / 2) = 10 samples, batch 4
    let a: Vec<usize> = r[0].iter().flat_map(|b| b.2.clone()).collect();
    assert!(r[1].iter().flat_map(|b| b.2.clone()).all(|i| !a.contains(&i)));
}

#[test]
fn bad_samples_are_replaced_and_bad_shards_named() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("folder"), t.path().join("shards"));
    make_folder(&src);
    std::fs::write(src.join("train/class1/img.9.jpg"), b"not a jpeg").unwrap();
    let index = write(&src, &dst, 6000);
    // Truncate one shard to half: its missing samples become bad samples naming it.
    let victim = &index.splits["train"].shards[1];
    let path = dst.join("train").join(&victim.file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let c = cfg(&dst);
    let mut o = LoaderOptions::train(&c, 22, 1, 0, 1);
    (o.report_bad_files, o.drop_last, o.shuffle_buffer) = (false, false, 4);
    let l = Loader::from_shards(ShardSet::open(&dst, "train").unwrap(), Transform::train(&c).unwrap(), o)
        .unwrap();
    let mut it = l.epoch(0);
    let b = it.next().unwrap().unwrap();
    assert_eq!(b.n, 22);
    let report = it.bad_files().clone();
    assert!(report.count >= 2, "{report}");
    let text = report.to_string();
    assert!(text.contains(&victim.file), "{text}");
    assert!(
        b.bad_files
            .iter()
            .any(|f| f.reason.contains("decode") || f.reason.contains("JPEG") || f.reason.contains("image")),
        "{:?}",
        b.bad_files
    );
}

#[test]
fn a_rerun_with_other_settings_is_refused_naming_them_and_force_rebuilds() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("folder"), t.path().join("shards"));
    make_folder(&src);
    let first = write(&src, &dst, 6000);
    // The same settings again: nothing to do.
    let same = ShardWriteOptions { shard_bytes: 6000, ..Default::default() };
    assert!(!write_shards(&src, &dst, &same, &mut |_, _, _| {}).unwrap().written);
    // Other settings: refused, naming both, and the set is untouched.
    let bigger = ShardWriteOptions { shard_bytes: 1 << 20, ..Default::default() };
    let err = write_shards(&src, &dst, &bigger, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("--force") && err.contains("1 MB shards"), "{err}");
    assert_eq!(ShardIndex::load(&dst).unwrap(), first);
    // Forced: rebuilt with the new size (one shard per split), old shard files gone.
    let forced = ShardWriteOptions { force: true, ..bigger };
    let rebuilt = write_shards(&src, &dst, &forced, &mut |_, _, _| {}).unwrap();
    assert!(rebuilt.written);
    assert_eq!(rebuilt.index.splits["train"].shards.len(), 1);
    assert!(first.splits["train"].shards.len() > 1, "the first set had several shards");
    let files = std::fs::read_dir(dst.join("train")).unwrap().count();
    assert_eq!(files, 1, "the first set's shard files were removed");
    assert_eq!(ShardSet::open(&dst, "train").unwrap().len(), first.splits["train"].samples);
}
