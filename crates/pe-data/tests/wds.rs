//! `format = "webdataset"` on real tar files: URL lists and brace patterns over `pe prepare shards`
//! output and hand-written WebDataset tars, counts from `_info.json` / `sizes.json` / a cached scan,
//! `pipe:` streams, JSON labels, exact mid-epoch resume, and a missing shard failing the epoch.
//! (HTTP and S3 servers are exercised from tests/python/test_webdataset.py.)

use pe_data::config::{DataConfig, DataFormat};
use pe_data::loader::{Loader, Split};
use pe_data::shards::{write_shards, ShardWriteOptions};
use pe_data::wds::{ClassSpec, LabelKey, ShardList};
use pe_data::Error;
use std::path::Path;

fn make_folder(root: &Path) {
    for c in 0..3u32 {
        for split in ["train", "val"] {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..6u32 {
                let img = image::RgbImage::from_fn(30 + 5 * k, 20 + 3 * c, |x, y| {
                    image::Rgb([(x * 7) as u8, (20 * k + y) as u8, (90 * c) as u8])
                });
                img.save(dir.join(format!("{k}.jpg"))).unwrap();
            }
        }
    }
}

/// A folder and its shards (~4 per split).
fn shards(dir: &Path) -> std::path::PathBuf {
    let (folder, out) = (dir.join("folder"), dir.join("shards"));
    make_folder(&folder);
    let opts = ShardWriteOptions { shard_bytes: 4 << 10, ..Default::default() };
    write_shards(&folder, &out, &opts, &mut |_, _, _| {}).unwrap();
    out
}

fn tars(root: &Path, split: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(split))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    names.sort();
    names
}

/// The training shards as `data.train_urls` entries relative to the shard root.
fn train_urls(root: &Path) -> Vec<String> {
    tars(root, "train").iter().map(|t| format!("train/{t}")).collect()
}

fn wds(root: &Path, train: Vec<String>, val: Vec<String>) -> DataConfig {
    DataConfig {
        root: root.to_path_buf(),
        format: DataFormat::WebDataset,
        train_urls: ShardList(train),
        val_urls: ShardList(val),
        img_size: 16,
        workers: 2,
        ..Default::default()
    }
}

fn open(cfg: &DataConfig, split: Split, cache: &Path) -> pe_data::Result<Loader> {
    Loader::open_with_cache(cfg, split, 0, 1, cache)
}

type Flat = Vec<(Vec<u8>, Vec<i64>)>;

fn epoch(loader: &Loader, start: usize) -> Flat {
    loader.epoch_from(1, start).map(|b| b.unwrap()).map(|b| (b.images, b.labels)).collect()
}

const EVAL: Split = Split::Eval { batch_size: 4, classes: None };
const TRAIN: Split = Split::Train { batch_size: 4, seed: 3 };

#[test]
fn brace_patterns_over_pe_shards_read_what_the_index_format_reads() {
    let dir = tempfile::tempdir().unwrap();
    let root = shards(dir.path());
    assert!(root.join("_info.json").is_file(), "pe prepare shards writes timm's _info.json");
    let n = tars(&root, "val").len();
    assert!(n >= 3, "several shards: {n}");
    let pattern = format!("val/{{000000..{:06}}}.tar", n - 1);
    let cfg = wds(&root, vec!["train/000000.tar".into()], vec![pattern]);
    let cache = dir.path().join("cache");
    let loader = open(&cfg, EVAL, &cache).unwrap();
    assert_eq!(loader.len(), 18);
    assert_eq!(loader.classes(), ["class0", "class1", "class2"], "names from _info.json");
    assert!(!cache.exists(), "counts came from _info.json, nothing scanned");
    let indexed = DataConfig { format: DataFormat::Shards, ..wds(&root, vec![], vec![]) };
    let reference = Loader::open(&indexed, EVAL, 0, 1).unwrap();
    assert_eq!(epoch(&loader, 0), epoch(&reference, 0), "same images, labels and order");
}

#[test]
fn without_metadata_the_counts_come_from_one_cached_scan() {
    let dir = tempfile::tempdir().unwrap();
    let root = shards(dir.path());
    std::fs::remove_file(root.join("_info.json")).unwrap();
    let cfg = wds(&root, train_urls(&root), vec![]);
    let cache = dir.path().join("cache");
    let loader = open(&cfg, TRAIN, &cache).unwrap();
    assert_eq!(loader.len(), 18);
    assert_eq!(loader.classes(), ["0", "1", "2"], "numbered from the largest label scanned");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(cached.len(), 1);
    // The cache answers the second open: the shards are not read again (here they are gone).
    let full = epoch(&loader, 0);
    let moved = dir.path().join("moved");
    std::fs::rename(root.join("train"), &moved).unwrap();
    let again = open(&cfg, TRAIN, &cache).unwrap();
    assert_eq!(again.len(), 18);
    std::fs::rename(&moved, root.join("train")).unwrap();
    assert_eq!(epoch(&again, 0), full);
    // A sizes.json beside the shards and a class count from the recipe need no scan.
    let sizes: serde_json::Map<String, serde_json::Value> =
        tars(&root, "train").into_iter().map(|t| (t, 6.into())).collect();
    std::fs::write(root.join("train/sizes.json"), serde_json::to_string(&sizes).unwrap()).unwrap();
    let cfg = DataConfig { classes: Some(ClassSpec::Count(3)), ..cfg };
    let other = dir.path().join("other-cache");
    let lying = open(&cfg, TRAIN, &other).unwrap();
    assert_eq!(lying.len(), 6 * tars(&root, "train").len(), "sizes.json is believed");
    assert!(!other.exists());
}

#[test]
fn pipe_streams_resume_mid_epoch_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let root = shards(dir.path());
    let piped: Vec<String> = tars(&root, "train")
        .iter()
        .map(|t| format!("pipe:cat {}", root.join("train").join(t).display()))
        .collect();
    let cfg = DataConfig { classes: Some(ClassSpec::Count(3)), ..wds(&root, piped, vec![]) };
    let loader = open(&cfg, TRAIN, &dir.path().join("cache")).unwrap();
    let full = epoch(&loader, 0);
    assert_eq!(full.len(), 4, "18 images / 4, last dropped");
    assert_eq!(epoch(&loader, 2), full[2..], "a resumed epoch skips exactly what was trained on");
    let same =
        open(&DataConfig { train_urls: ShardList(train_urls(&root)), ..cfg }, TRAIN, &dir.path().join("c2"))
            .unwrap();
    assert_eq!(epoch(&same, 0), full, "a pipe reads what the file holds");
}

#[test]
fn a_shard_that_cannot_be_read_fails_the_epoch_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = shards(dir.path());
    // Counted by a sizes file, a missing shard is met when the epoch reads it: an error, not a skip.
    std::fs::write(root.join("val/sizes.json"), r#"{"000000.tar": 4, "999999.tar": 4}"#).unwrap();
    let cfg = wds(&root, vec![], vec!["val/{000000,999999}.tar".into()]);
    let cfg = DataConfig { classes: Some(ClassSpec::Count(3)), read_retries: 1, ..cfg };
    let loader = open(&cfg, EVAL, &dir.path().join("cache")).unwrap();
    let err = loader.epoch(0).find_map(|b| b.err()).expect("the epoch fails");
    assert!(matches!(err, Error::Unreadable(_)), "{err}");
    assert!(err.to_string().contains("999999.tar: not found"), "{err}");
    // A failing command is retried, then named (here by the scan that needs its counts).
    let cfg = DataConfig { val_urls: ShardList(vec!["pipe:exit 3".into()]), ..cfg };
    let err = open(&cfg, EVAL, &dir.path().join("cache")).unwrap_err().to_string();
    assert!(err.contains("pipe:exit 3") && err.contains("2 attempts"), "{err}");
}

#[test]
fn labels_come_from_a_json_field_and_other_members_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("json-000.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(20, 20, image::Rgb([9, 99, 199]))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    for k in 0..5u32 {
        let members = [
            (format!("dir/s{k}.jpg"), jpeg.clone()),
            (
                format!("dir/s{k}.json"),
                format!(r#"{{"label": {}, "filename": "x{k}.JPEG"}}"#, k % 2).into_bytes(),
            ),
            (format!("dir/s{k}.txt"), b"a caption".to_vec()),
        ];
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, name, data.as_slice()).unwrap();
        }
    }
    tar.finish().unwrap();
    drop(tar);
    let cfg = DataConfig {
        label_key: LabelKey::Json("label".into()),
        ..wds(dir.path(), vec![], vec!["json-{000..000}.tar".into()])
    };
    let loader = open(&cfg, EVAL, &dir.path().join("cache")).unwrap();
    assert_eq!(loader.len(), 5);
    let labels: Vec<i64> = epoch(&loader, 0).into_iter().flat_map(|(_, l)| l).collect();
    assert_eq!(labels, [0, 1, 0, 1, 0]);
    let err = open(&wds(dir.path(), vec![], vec![]), EVAL, &dir.path().join("cache")).unwrap_err();
    assert!(err.to_string().contains("data.val_urls"), "{err}");
}

#[test]
fn only_rank_0_scans_and_the_other_ranks_wait_for_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let root = shards(dir.path());
    std::fs::remove_file(root.join("_info.json")).unwrap();
    let cfg = wds(&root, train_urls(&root), vec![]);
    let cache = dir.path().join("cache");
    let waiting = std::thread::scope(|scope| {
        let rank1 = scope.spawn(|| Loader::open_with_cache(&cfg, TRAIN, 1, 2, &cache).map(|l| l.len()));
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert!(!rank1.is_finished(), "rank 1 waits rather than scan");
        assert!(!cache.exists());
        let rank0 = Loader::open_with_cache(&cfg, TRAIN, 0, 2, &cache).unwrap();
        assert_eq!(rank0.len(), 18);
        rank1.join().unwrap().unwrap()
    });
    assert_eq!(waiting, 18, "rank 1 took rank 0's counts");
}
